"""Phantoms: seeded, 2D and 3D, every class drawn, and not separable by intensity alone."""

import numpy as np
import pytest
import torch

from medwidit.data.phantoms import PhantomDataset, make_phantom


@pytest.mark.parametrize("shape", [(32, 32), (24, 24, 24)], ids=["2d", "3d"])
def test_seeded_shapes_and_classes(shape):
    image, label = make_phantom(shape, num_classes=3, seed=4)
    assert image.shape == label.shape == (1, *shape)
    assert image.dtype == torch.float32 and label.dtype == torch.int64
    assert set(label.unique().tolist()) == {0, 1, 2}
    again = make_phantom(shape, num_classes=3, seed=4)
    other = make_phantom(shape, num_classes=3, seed=5)
    assert torch.equal(image, again[0]) and torch.equal(label, again[1])
    assert not torch.equal(label, other[1])


def test_foreground_classes_share_their_intensity():
    """The two foreground classes have nearly the same mean intensity, so only shape and texture separate them,
    and the best single intensity threshold between background and foreground still misclassifies many voxels."""
    stats = {1: [], 2: []}
    errors = []
    for seed in range(6):
        image, label = make_phantom((32, 32, 32), num_classes=3, seed=seed)
        for c in (1, 2):
            stats[c].append(image[label == c].mean().item())
        values, foreground = image.flatten().numpy(), (label.flatten() > 0).numpy()
        best = min(np.mean((values > th) != foreground) / foreground.mean() for th in np.linspace(-0.5, 1.5, 41))
        errors.append(best)
    assert abs(np.mean(stats[1]) - np.mean(stats[2])) < 0.15
    assert np.mean(errors) > 0.1  # misclassified voxels, relative to the foreground size


def test_dataset_items_and_errors():
    dataset = PhantomDataset(3, (16, 16), num_classes=2, seed=1)
    item = dataset[2]
    assert len(dataset) == 3 and set(item) == {"image", "label"} and item["image"].shape == (1, 16, 16)
    assert torch.equal(dataset[-1]["label"], item["label"])
    assert not torch.equal(PhantomDataset(3, (16, 16), num_classes=2, seed=2)[2]["image"], item["image"])
    with pytest.raises(IndexError):
        dataset[3]
    with pytest.raises(ValueError, match="shape"):
        make_phantom((4, 4), seed=0)
    with pytest.raises(ValueError, match="num_classes"):
        PhantomDataset(2, (16, 16), num_classes=1)
    for seed in (-1, 0.5):  # accepted, then a raw error from numpy at the first item
        with pytest.raises(ValueError, match=rf"seed must be an int >= 0, got {seed!r}"):
            PhantomDataset(2, (16, 16), seed=seed)
        with pytest.raises(ValueError, match=rf"seed must be an int >= 0, got {seed!r}"):  # numpy's, unnamed
            make_phantom((16, 16), seed=seed)
    for name in ("noise_std", "bias", "texture"):  # NaN passed "< 0" and made an all-NaN image
        with pytest.raises(ValueError, match=rf"{name} must be in \[0.0, inf\), got nan"):
            make_phantom((16, 16), seed=0, **{name: float("nan")})
    with pytest.raises(ValueError, match=r"max_objects must be an int >= 1, got 1.5"):  # was taken
        make_phantom((16, 16), seed=0, max_objects=1.5)
    numpy_ints = PhantomDataset(1, (16, 16), seed=np.int64(3), max_objects=np.int64(2))[0]["image"]  # numpy's too
    assert torch.equal(numpy_ints, PhantomDataset(1, (16, 16), seed=3, max_objects=2)[0]["image"])


def test_class_contrast_and_object_scale():
    base = make_phantom((24, 24, 24), num_classes=3, seed=3)
    bigger = make_phantom((24, 24, 24), num_classes=3, seed=3, object_scale=2.0)
    assert (bigger[1] > 0).sum() > (base[1] > 0).sum()
    image, label = make_phantom((24, 24, 24), num_classes=3, seed=3, class_contrast=0.8)
    assert image[label == 2].mean() - image[label == 1].mean() > 0.5
    with pytest.raises(ValueError, match="object_scale"):
        make_phantom((16, 16), seed=0, object_scale=0.0)
    for value in (float("nan"), float("inf")):  # NaN made every object voxel NaN, class 1's too
        with pytest.raises(ValueError, match=rf"class_contrast must be a finite number, got {value!r}"):
            make_phantom((16, 16), seed=0, class_contrast=value)
