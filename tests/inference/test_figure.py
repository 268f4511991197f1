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


def test_the_uncertainty_colours_span_the_entropys_range_not_the_cases_maximum():
    """From a review: scaled to each case's maximum, a case certain to 1e-13 nats was painted as brightly as one at
    ln 2. The colours span 0 to ln K: the same map painted at two scales of certainty looks different."""
    import math

    image, labels, unc = _volume()
    for scale in (1e-13, 0.69):
        figure = overlay_figure(image, labels, unc / unc.max() * scale, num_classes=3)
        shown = [a.images[0] for a in figure.axes if a.images and a.get_title().startswith("uncertainty")]
        assert [im.get_clim() for im in shown] == [(0.0, math.log(3))] * 3
    figure = overlay_figure(image, labels > 0, unc)  # K from the labels: 2
    shown = [a.images[0] for a in figure.axes if a.images and a.get_title().startswith("uncertainty")]
    assert shown[0].get_clim() == (0.0, math.log(2))


def test_thick_slices_are_drawn_tall():
    """From a mutation review: each panel's aspect (a voxel's height / width after rot90) was never checked; inverted,
    3 mm slices under 1 mm pixels were drawn a third as tall instead of three times."""
    image, labels, _ = _volume()
    figure = overlay_figure(image, labels, spacing=(1.0, 2.0, 3.0))
    assert [a.get_aspect() for a in figure.axes[:3]] == [1.5, 3.0, 2.0]  # sagittal z/y, coronal z/x, axial y/x
