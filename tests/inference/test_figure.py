"""The PNG a person looks at: written atomically, never over an existing file, slices through the foreground."""

import numpy as np
import pytest
from matplotlib.image import imread

from medwidit.inference.figure import _slice_centre, overlay_figure, save_overlay_figure


def _volume():
    image = np.random.default_rng(0).normal(size=(20, 24, 16)).astype(np.float32)
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[12:18, 4:8, 2:6] = 1
    labels[14:16, 5:7, 3:5] = 2
    return image, labels, labels.astype(np.float32) * 0.3


def test_figure_is_a_png_with_both_rows(tmp_path):
    image, labels, unc = _volume()
    path = save_overlay_figure(tmp_path / "case.png", image, labels, unc, spacing=(1.0, 1.0, 3.0), title="case")
    pixels = imread(path)
    assert pixels.shape[0] > 700 and pixels.shape[1] > 1000  # two rows of three panels
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.png"]  # no temporary left behind
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


def test_figure_never_overwrites_unless_asked(tmp_path):
    image, labels, unc = _volume()
    target = tmp_path / "case.png"
    target.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="case.png"):
        save_overlay_figure(target, image, labels, unc)
    assert target.read_bytes() == b"keep"
    save_overlay_figure(target, image, labels, unc, overwrite=True)
    assert target.read_bytes() != b"keep"


def test_slices_pass_through_the_foreground():
    _, labels, _ = _volume()
    centre = _slice_centre(labels)
    assert labels[centre] > 0
    assert _slice_centre(np.zeros((4, 6, 8))) == (2, 3, 4)


def test_shape_mismatch_is_a_clear_error():
    image, labels, unc = _volume()
    with pytest.raises(ValueError, match="one shape"):
        overlay_figure(image, labels[:-1])
    with pytest.raises(ValueError, match="uncertainty"):
        overlay_figure(image, labels, unc[:, :-1])
