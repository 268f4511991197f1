"""The atomic-write helper: all or nothing, mode 0644, and no overwrite unless asked, even between processes."""

import multiprocessing as mp
import os
import stat
from pathlib import Path

import pytest

from medwidit.utils import atomic_write, check_int, check_options, check_range, temporary_path


def test_write_lands_whole_with_mode_0644_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.nii.gz"
    atomic_write(target, lambda p: p.write_bytes(b"x" * 10))
    assert target.read_bytes() == b"x" * 10
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["a.nii.gz"]


def test_mode_is_0644_whatever_the_umask(tmp_path):
    """Outputs are shared like the data beside them: under a private umask (077) the written file is still 0644, and
    ``mode`` is honoured; under the usual umask 022 a file is 0644 without the explicit chmod."""
    previous = os.umask(0o077)
    try:
        shared = atomic_write(tmp_path / "shared.nii.gz", lambda p: p.write_bytes(b"x"))
        own = atomic_write(tmp_path / "own.nii.gz", lambda p: p.write_bytes(b"x"), mode=0o640)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644 and stat.S_IMODE(own.stat().st_mode) == 0o640


def test_temporary_keeps_the_suffixes_and_is_hidden(tmp_path):
    name = temporary_path(tmp_path / "scan.nii.gz").name
    assert name.startswith(".scan.") and name.endswith(".partial.nii.gz")


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")

    def fail(p):
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["x.json"]


def test_no_overwrite_refuses_an_existing_file_and_cleans_up(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("first")
    with pytest.raises(FileExistsError, match="x.txt"):
        atomic_write(target, lambda p: p.write_text("second"), overwrite=False)
    assert target.read_text() == "first" and os.listdir(tmp_path) == ["x.txt"]


def _race(path, text, barrier, results):
    barrier.wait()
    try:
        atomic_write(path, lambda p: p.write_text(text), overwrite=False)
        results.put(text)
    except FileExistsError:
        results.put(None)


def test_two_processes_never_both_win_without_overwrite(tmp_path):
    ctx = mp.get_context("spawn")
    for round_ in range(3):
        target, barrier, results = tmp_path / f"r{round_}.txt", ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(target, t, barrier, results)) for t in ("a", "b")]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        winners = [w for w in (results.get(timeout=10), results.get(timeout=10)) if w is not None]
        assert len(winners) == 1 and target.read_text() == winners[0]


def test_checks_name_the_argument():
    assert check_int("steps", 3) == 3
    for bad in (0, True, 2.0, "3"):
        with pytest.raises(ValueError, match="steps must be an int >= 1"):
            check_int("steps", bad)
    with pytest.raises(ValueError, match=r"steps must be an int in 1..10"):
        check_int("steps", 11, high=10)
    assert check_range("overlap", 0.5, 0, 1) == 0.5
    with pytest.raises(ValueError, match=r"overlap must be in \[0, 1\)"):
        check_range("overlap", 1.0, 0, 1)
    for bad in ("0.5", None, [0.5], float("nan"), True):  # not numbers: a raw TypeError named no argument
        with pytest.raises(ValueError, match=r"overlap must be in \[0, 1\), got"):
            check_range("overlap", bad, 0, 1)


def test_check_bounds_are_inclusive_where_documented():
    """From a mutation review: check_int takes both ends of low..high (a ``>=`` on high refused the maximum) and
    check_range takes ``low`` itself and ``high`` only with closed_high (a ``<`` on low refused an overlap of 0)."""
    assert check_int("steps", 10, high=10) == 10 and check_int("steps", 1, high=10) == 1
    assert check_int("steps", 0, low=0) == 0
    assert check_range("overlap", 0, 0, 1) == 0.0
    assert check_range("p", 1.0, 0, 1, closed_high=True) == 1.0
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got"):
        check_range("p", 1.5, 0, 1, closed_high=True)


def test_options_of_a_constructor_name_the_key_and_what_it_takes():
    """One check for every dict of options a config hands to a constructor (a network's, the generator's, a noise
    schedule's): the key and the source named; keys the caller sets are refused too; **kwargs take anything."""
    from types import MappingProxyType

    def build(size, depth=1, device="cpu"):
        return size

    assert check_options(build, MappingProxyType({"size": 2}), "net") == {"size": 2}  # any mapping
    with pytest.raises(
        ValueError, match=r"^net: 'sise' \(a typo\?\) is not an option of build; it takes size, depth\.$"
    ):
        check_options(build, {"sise": 2}, "net", exclude=("device",), notes={"sise": " (a typo?)"})
    with pytest.raises(ValueError, match=r"net: 'device' is not an option of the model"):
        check_options(build, {"device": "cuda"}, "net", exclude=("device",), name="the model")
    with pytest.raises(ValueError, match=r"^net must be a dict of the options of build, got \[\('size', 2\)\]\.$"):
        check_options(build, [("size", 2)], "net")
    assert check_options(lambda **kwargs: None, {"anything": 1}, "net") == {"anything": 1}
    with pytest.raises(ValueError, match=r"net: 'device' is not an option"):  # what the caller sets, even so
        check_options(lambda **kwargs: None, {"device": "cuda"}, "net", exclude=("device",))
    assert check_options(max, {"key": len}, "net") == {"key": len}  # a signature inspect cannot read: not checked

    def positional(a, /, b, *layers, c=0):
        return a

    for key in ("a", "layers"):  # a keyword cannot set them: both passed and then raised a TypeError
        with pytest.raises(ValueError, match=rf"net: '{key}' is not an option of positional; it takes b, c\."):
            check_options(positional, {key: 1}, "net")


def test_without_hard_links_an_interrupt_before_the_replace_leaves_no_empty_file(tmp_path, monkeypatch):
    """Where the file system has no hard links the commit reserves the name with an empty file, then replaces it:
    an interrupt in between left that empty file under the final name (found by a review)."""
    import errno

    def no_link(source, target):
        raise OSError(errno.EPERM, "hard links not supported")

    def interrupted(source, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.nii.gz", lambda p: p.write_bytes(b"data"), overwrite=False)
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    atomic_write(tmp_path / "x.nii.gz", lambda p: p.write_bytes(b"data"), overwrite=False)  # and it commits
    assert (tmp_path / "x.nii.gz").read_bytes() == b"data"


@pytest.mark.parametrize(("codes", "shape"), [("PIL", (6, 5, 4)), ("LAS", (6, 5, 4)), ("PRS", (6, 5)), ("LAI", (6, 5))])
def test_voxel_reorder_puts_another_voxel_order_back_and_refuses_other_lattices(codes, shape):
    """One lattice stored in another voxel order (nibabel's as_reoriented) comes back to this grid's order; a 2-D
    grid's affine is 4 x 4 (the first version built a 3 x 3 reorder for it and failed in numpy's matmul)."""
    import nibabel as nib
    import numpy as np
    from nibabel.orientations import axcodes2ornt, ornt_transform

    from medwidit.utils import voxel_reorder

    affine = np.diag([1.5, 0.8, 2.0, 1.0])
    affine[:3, 3] = [10.0, -30.0, 4.0]
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    image = nib.Nifti1Image(data.reshape(*shape, *[1] * (3 - len(shape))), affine)  # nibabel reorients 3-D only
    other = image.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(codes)))
    other_data = np.asarray(other.dataobj).reshape(other.shape[: len(shape)])
    assert other_data.shape != shape or codes in ("LAS", "LAI")
    axes, flips = voxel_reorder(shape, affine, other_data.shape, other.affine)
    np.testing.assert_array_equal(np.flip(np.transpose(other_data, axes), flips), data)
    assert voxel_reorder(shape, affine, shape, affine) == (tuple(range(len(shape))), ())
    swapped_sizes = (shape[1], shape[0], *shape[2:])  # one affine, the sizes of two axes swapped: another grid
    assert voxel_reorder(shape, affine, swapped_sizes, affine) is None
    moved = other.affine.copy()
    moved[:3, 3] += 0.5 * affine[:3, 0]  # half a voxel off: another lattice
    assert voxel_reorder(shape, affine, other_data.shape, moved) is None
    assert voxel_reorder(shape, affine, other_data.shape, other.affine @ np.diag([-1.0, 1, 1, 1])) is None
    if len(shape) == 2:  # a sagittal plane: world y and z in the image's plane (the in-plane solve was singular)
        sagittal = np.array([[0.0, 0, 1, 7], [1.5, 0, 0, -3], [0, 0.8, 0, 2], [0, 0, 0, 1]])
        swapped = sagittal @ np.array([[0.0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
        assert voxel_reorder(shape, sagittal, shape[::-1], swapped) == ((1, 0), ())


def test_upper_case_itk_suffixes_read_for_the_grid_and_the_label_values(tmp_path):
    """From a review of the fix that made read_image take SCAN.MHA: the training data checks (image_grid,
    label_values) still let ITK choose a reader by the case-sensitive suffix, and failed on the same files."""
    import numpy as np
    import SimpleITK as sitk

    from medwidit.utils.files import image_grid, label_values

    data = np.zeros((4, 5, 6), np.uint8)
    data[1:3, 1:3, 1:3] = 2
    for name in ("LABEL.MHA", "LABEL.NRRD"):
        sitk.WriteImage(sitk.GetImageFromArray(data), str(tmp_path / name.lower()))
        (tmp_path / name.lower()).rename(tmp_path / name)
        assert image_grid(tmp_path / name)[0] == (6, 5, 4)
        assert label_values(tmp_path / name).tolist() == [0, 2]


def test_a_lock_file_another_user_owns_is_locked_read_only(tmp_path, monkeypatch):
    """From a review: a second user of a shared output folder failed every commit with "[Errno 13] Permission denied:
    '.medwidit/lock'": the lock file was another user's (mode 0644) and opened for writing, which flock never needs."""
    import fcntl

    from medwidit.utils.files import locked

    path = tmp_path / "lock"
    path.touch()
    real_open = os.open

    def others(file, flags, *args):  # as a user without write access to the lock file sees it
        if Path(file) == path and flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, flags, *args)

    monkeypatch.setattr(os, "open", others)
    with locked(path) as held:
        assert held
        fd = real_open(path, os.O_RDONLY)
        try:  # the lock is really held: another descriptor cannot take it
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_a_new_lock_file_is_writable_as_the_umask_allows(tmp_path):
    """A group's shared folder (umask 002): the lock file another member of the group must open is group-writable."""
    from medwidit.utils.files import locked

    old = os.umask(0o002)
    try:
        with locked(tmp_path / "lock"):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "lock").stat().st_mode & 0o777 == 0o664
