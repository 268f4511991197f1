"""utils.check_bool: a command-line "false" is False (bool("false") is True, which once turned spacing conditioning
on in a run meant to train without it); anything else that is not a boolean is named."""

import pytest

from medwidit.nets import WiDiT
from medwidit.utils import check_bool


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
