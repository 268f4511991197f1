"""inference/trust: the entropy decomposition and the Dice estimate on ensembles whose answers are known, and
test-time views that undo exactly."""

import math

import pytest
import torch

from medwidit.diffusion import encode_labels, to_probabilities
from medwidit.inference.trust import apply_view, augmentation_views, decompose_entropy, estimated_dice, invert_view


def _hard(labels: torch.Tensor, k: int = 2) -> torch.Tensor:
    return to_probabilities(encode_labels(labels, k))


def test_groups_that_disagree_are_epistemic_and_noise_inside_a_group_aleatoric():
    zero, one = _hard(torch.zeros(1, 1, 4, 4, dtype=torch.long)), _hard(torch.ones(1, 1, 4, 4, dtype=torch.long))
    # two groups that each always say the same thing, but the opposite of each other: all epistemic
    split = decompose_entropy(torch.stack([zero, zero, one, one]), groups=2)
    torch.testing.assert_close(split["total"], torch.full((1, 1, 4, 4), math.log(2)))
    torch.testing.assert_close(split["aleatoric"], torch.zeros(1, 1, 4, 4))
    torch.testing.assert_close(split["epistemic"], torch.full((1, 1, 4, 4), math.log(2)))
    # each group torn the same way inside: all aleatoric
    split = decompose_entropy(torch.stack([zero, one, zero, one]), groups=2)
    torch.testing.assert_close(split["aleatoric"], torch.full((1, 1, 4, 4), math.log(2)))
    torch.testing.assert_close(split["epistemic"], torch.zeros(1, 1, 4, 4))


def test_decomposition_adds_up_and_rejects_uneven_groups():
    p = torch.softmax(torch.randn(6, 2, 3, 5, 5, generator=torch.Generator().manual_seed(0)), dim=2)
    split = decompose_entropy(p, groups=3)
    torch.testing.assert_close(split["aleatoric"] + split["epistemic"], split["total"])
    assert (split["epistemic"] >= 0).all()
    with pytest.raises(ValueError, match="6 members cannot form 4 groups"):
        decompose_entropy(p, groups=4)


def test_estimated_dice_is_one_when_members_agree_and_exact_for_a_known_split():
    labels = torch.zeros(1, 1, 10, 10, dtype=torch.long)
    labels[..., :5] = 1
    same = _hard(labels)
    torch.testing.assert_close(estimated_dice(torch.stack([same, same, same])), torch.ones(1, 2))
    shifted = labels.clone()
    shifted[..., 4] = 0  # one member's class 1 loses a column: 40 of 50 voxels
    members = torch.stack([same, same, _hard(shifted)])
    dice = estimated_dice(members)  # final labels = majority = `labels`
    torch.testing.assert_close(dice[0, 1], torch.tensor((1 + 1 + 2 * 40 / 90) / 3))
    torch.testing.assert_close(dice[0, 0], torch.tensor((1 + 1 + 2 * 50 / 110) / 3))


def test_views_start_with_the_identity_and_invert_exactly():
    views = augmentation_views(4, 3, seed=1)
    assert views[0].flip_axes == () and views[0].gamma == 1.0 and len(views) == 4
    assert any(v.flip_axes for v in views[1:]) and any(v.gamma != 1.0 for v in views[1:])
    image = torch.rand(1, 1, 5, 6, 7) * 2 - 1
    maps = torch.rand(2, 1, 3, 5, 6, 7)  # (S, B, K, *S)
    for view in views:
        seen = apply_view(image, view)
        assert seen.shape == image.shape and seen.min() >= -1 and seen.max() <= 1
        assert torch.equal(invert_view(invert_view(maps, view, 3), view, 3), maps)
        if view.gamma == 1.0:
            assert torch.equal(invert_view(seen, view), image)
        else:  # the curve is monotone: the order of intensities survives it
            assert torch.equal(invert_view(seen, view).flatten().argsort(), image.flatten().argsort())
