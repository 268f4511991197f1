"""utils.check_bool: a command-line "false" is False (bool("false") is True, which once turned spacing conditioning
on in a run meant to train without it); anything else that is not a boolean is named."""

import argparse

import numpy as np
import pytest

from medwidit.nets import WiDiT
from medwidit.utils import check_bool, check_interval


@pytest.mark.parametrize(("value", "expected"), [(True, True), (False, False), ("false", False), (" True ", True)])
def test_booleans_and_their_words(value, expected):
    assert check_bool("flag", value) is expected


@pytest.mark.parametrize("value", [0, 1, "no", None, "flase"])
def test_anything_else_is_refused_by_name(value):
    with pytest.raises(ValueError, match=rf"flag must be true or false, got {value!r}"):
        check_bool("flag", value)


def test_widit_reads_a_false_word_as_false():
    net = WiDiT(spatial_dim=2, hidden_size=16, depth=1, num_heads=2, window_size=2, spacing_conditioning="false")
    assert net.config["spacing_conditioning"] is False and net.s_embedder is None


def test_check_interval_takes_a_finite_ordered_pair_above_its_floor_and_names_it():
    """The (low, high) ranges transforms draw from (coil fields, slice thickness, neck length): one check for all."""
    assert check_interval("r", [0, 0.6]) == (0.0, 0.6)
    assert check_interval("r", np.array([1.0, 4.0]), low=1.0) == (1.0, 4.0)
    for bad in ((0.5, 0.1), (-0.1, 0.3), (0.0, float("inf")), (False, True), 0.4, "ab", (1, 2, 3)):
        with pytest.raises(ValueError, match=r"r must be \(low, high\) mm with 0 <= low <= high, finite, got"):
            check_interval("r", bad, unit=" mm")
    with pytest.raises(ValueError, match="with 1 <= low"):
        check_interval("thickness_range", (0.5, 2.0), low=1.0)


def test_a_seed_is_an_int_torch_can_take_and_the_cli_parser_agrees():
    """From a review: --seed 99999999999999999999 passed every check and then failed each case in torch's
    manual_seed ("Overflow when unpacking long long"), the message naming the image. 0..2**64-1 is what torch takes;
    the CLI's parser (which imports nothing heavy) keeps the same bound."""
    import torch

    from medwidit.cli_parser import _seed
    from medwidit.utils import check_seed
    from medwidit.utils.checks import SEED_HIGH

    torch.Generator().manual_seed(check_seed(SEED_HIGH))
    assert check_seed(np.uint64(SEED_HIGH)) == SEED_HIGH and _seed(str(SEED_HIGH)) == SEED_HIGH
    for bad in (SEED_HIGH + 1, -1, 1.0, True):
        with pytest.raises(ValueError, match=r"seed must be an int in 0\.\.18446744073709551615 \(2\*\*64 - 1\)"):
            check_seed(bad)
    with pytest.raises(argparse.ArgumentTypeError, match=r"0\.\.2\*\*64-1"):
        _seed(str(SEED_HIGH + 1))
