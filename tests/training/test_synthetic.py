"""Synthetic training volumes from label maps, mixed with real ones in the data module."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.utils import set_determinism
from training_volumes import PREPROCESSING_3D, write_dataset

from medwidit.data.synth import SynthesisError
from medwidit.training import SegmentationDataModule
from medwidit.training.data import load_label_maps
from medwidit.training.synthetic import mixing_sampler

TARGETS = [0, 1, 1, 0, 0]  # generation labels 0..4 -> background, brain, brain, scalp, skull


def _label_maps(root, values=(0, 1, 2, 3, 4)):
    """A synthetic-head list with one case carrying two label maps (as head_labels.json does), relative paths."""
    grid = np.stack(np.meshgrid(*(np.arange(24) - 12,) * 3, indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    maps = {}
    for name, shift in (("label", 0.0), ("other_label", 1.0)):
        label = np.zeros((24, 24, 24), np.uint8)
        for value, outer in zip(values[:0:-1], (11, 9, 7, 4 + shift), strict=True):
            label[radius < outer] = value
        nib.save(nib.Nifti1Image(label, np.diag([2.0, 2.0, 2.0, 1.0])), root / f"head_{name}.nii.gz")
        maps[name] = f"head_{name}.nii.gz"
    image = (radius < 11).astype(np.float32) * 100  # the scan the maps label: the generator paints its own
    nib.save(nib.Nifti1Image(image, np.diag([2.0, 2.0, 2.0, 1.0])), root / "head_image.nii.gz")
    path = root / "head_labels.json"
    path.write_text(json.dumps({"training": [{"image": "head_image.nii.gz", **maps, "template": "t"}]}))
    return path


def _module(tmp_path, ratio, **kwargs):
    data_list = write_dataset(tmp_path / "real", shape=(24, 24, 24), num_classes=2)
    options = {"synth_data_list": _label_maps(tmp_path / "real"), "synth_num_labels": 5, "synth_target_labels": TARGETS}
    return SegmentationDataModule(
        data_list=data_list,
        preprocessing=PREPROCESSING_3D,
        roi_size=[16, 16, 16],
        batch_size=2,
        num_crops=2,
        num_workers=0,
        synth_ratio=ratio,
        **{**options, **kwargs},
    )


def test_every_label_entry_is_a_map_and_missing_files_are_named(tmp_path):
    path = _label_maps(tmp_path)
    maps = load_label_maps(path, "training", base_dir=tmp_path)
    assert [m["label"] for m in maps] == [
        str(tmp_path / "head_label.nii.gz"),
        str(tmp_path / "head_other_label.nii.gz"),
    ]
    (tmp_path / "head_other_label.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="other_label file .*head_other_label.nii.gz") as error:
        load_label_maps(path, "training", base_dir=tmp_path)
    # the bundle's default paints from the brain cache: with a --dataset_dir of one's own, say how to go without
    assert "relative to --dataset_dir, else to the list's own folder; to train without painted volumes" in str(
        error.value
    )


def test_label_maps_of_a_list_given_by_relative_paths(tmp_path, monkeypatch):
    """--dataset_dir data (or a relative cache folder) once joined MONAI's already resolved "label" to it again:
    "d/d/head_label.nii.gz", not found, and training stopped; the list's own folder, relative, the same."""
    (tmp_path / "d").mkdir()
    _label_maps(tmp_path / "d")
    monkeypatch.chdir(tmp_path)
    expected = [str(tmp_path / "d" / "head_label.nii.gz"), str(tmp_path / "d" / "head_other_label.nii.gz")]
    for base_dir in ("d", None):
        assert [m["label"] for m in load_label_maps("d/head_labels.json", "training", base_dir=base_dir)] == expected


def test_a_label_map_off_its_images_grid_is_named(tmp_path):
    """A head-label list whose map does not fit the scan it names is broken: setup says which map and which image."""
    path = _label_maps(tmp_path)
    other = nib.load(str(tmp_path / "head_other_label.nii.gz"))
    moved = other.affine.copy()
    moved[:3, 3] += 4.0  # the same voxels 4 mm away
    nib.save(nib.Nifti1Image(np.asarray(other.dataobj), moved), str(tmp_path / "head_other_label.nii.gz"))
    with pytest.raises(ValueError, match=r"training\[0\] other_label: label .*head_other_label.nii.gz.* is not on "
                                         r"the grid of image .*head_image.nii.gz"):  # fmt: skip
        load_label_maps(path, "training", base_dir=tmp_path)


def test_synthetic_only_crops_carry_task_classes_and_painted_images(tmp_path):
    dm = _module(tmp_path, 1.0)
    (tmp_path / "real" / "datalist.json").write_text(json.dumps({"validation": json.loads(
        (tmp_path / "real" / "datalist.json").read_text())["validation"]}))  # fmt: skip
    dm.setup("fit")  # no real training split needed at ratio 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 16, 16, 16) and batch["image"].dtype == torch.float32
    assert set(batch["label"].unique().tolist()) <= {0, 1} and (batch["label"] == 1).any()
    assert all(float(crop.std()) > 0 for crop in batch["image"])  # painted, then normalised like a real image


def test_mixed_loader_draws_both_kinds(tmp_path):
    dm = _module(tmp_path, 0.5)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader.dataset) == 2 + 2  # two real volumes, two label maps
    assert isinstance(loader.sampler, torch.utils.data.WeightedRandomSampler)
    torch.manual_seed(0)  # the sampler draws from torch's generator, which Lightning seeds
    draws = torch.as_tensor([i for _ in range(1000) for i in loader.sampler])  # indices 2, 3: the label maps
    assert set(draws.tolist()) == {0, 1, 2, 3} and abs(float((draws >= 2).float().mean()) - 0.5) < 0.04  # 5 sigma
    batch = next(iter(loader))
    assert batch["image"].shape[1:] == (1, 16, 16, 16)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 1.0])
def test_sampler_draws_synthetic_items_at_the_ratio(ratio):
    sampler = mixing_sampler(3, 5, ratio, seed=0)
    draws = torch.as_tensor([i for _ in range(500) for i in sampler])
    assert len(list(sampler)) == 8
    assert abs(float((draws >= 3).float().mean()) - ratio) < 0.02


def test_bad_synthesis_options_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"synth_ratio must be in \[0, 1\]"):
        _module(tmp_path, 1.5)
    with pytest.raises(ValueError, match="needs synth_num_labels, synth_target_labels"):
        _module(tmp_path, 0.5, synth_num_labels=None, synth_target_labels=None)
    # the documented tissue command (5 classes) mixed in the brain-only painted heads: every brain voxel class 1
    with pytest.raises(ValueError, match=r"up to 1 only, but the task has num_classes=5.*--synth_ratio 0"):
        _module(tmp_path, 0.25, num_classes=5)
    _module(tmp_path, 0.0, num_classes=5)  # real volumes alone
    # a short table: the label maps' check read it first, an IndexError out of check_files
    with pytest.raises(ValueError, match="synth_target_labels must give a class for each of the 5 generation labels"):
        _module(tmp_path, 0.5, synth_target_labels=[0, 1])
    _module(tmp_path, 0.25, num_classes=5, synth_target_labels=[0, 1, 2, 3, 4])  # a table that covers the classes


def test_synthesis_refuses_tasks_it_cannot_paint(tmp_path):
    """The generator paints one channel of a 3-D head: two modalities failed at the first batch (a stack of 1 and 2
    channels), a 2-D task in RandSliceThicknessd's axes."""
    data_list = write_dataset(tmp_path / "real", shape=(24, 24, 24), num_classes=2)
    options = {"synth_data_list": _label_maps(tmp_path / "real"), "synth_num_labels": 5, "synth_target_labels": TARGETS}

    def module(ratio, preprocessing, roi_size):
        return SegmentationDataModule(data_list=data_list, preprocessing=preprocessing, roi_size=roi_size,
                                      synth_ratio=ratio, **options)  # fmt: skip

    two = {**PREPROCESSING_3D, "num_modalities": 2}
    with pytest.raises(ValueError, match=r"paints one-channel 3-D volumes, but this task has 2 modalities"):
        module(0.5, two, [16, 16, 16])
    with pytest.raises(ValueError, match=r"and a 2-D roi_size"):
        module(0.5, PREPROCESSING_3D, [16, 16])
    module(0.0, two, [16, 16, 16])  # real volumes alone


def test_a_label_map_without_any_target_class_is_named(tmp_path):
    """A map whose labels all map to background passed, and every painted crop was background."""
    dm = _module(tmp_path, 1.0, synth_target_labels=[0, 0, 0, 1, 0])  # only label 3 is a task class
    _label_maps(tmp_path / "real", values=(0, 1, 2, 4, 4))  # the same files, now without label 3
    with pytest.raises(SynthesisError, match=r"none of its labels \[0, 1, 2, 4\] maps to a task class other than 0"):
        dm.setup("fit")


@pytest.mark.parametrize("shape", [(24, 24), (24, 24, 24, 2)])
def test_a_label_map_that_is_not_one_volume_is_named_at_setup(tmp_path, shape):
    """A slice or a 4-D map passed the checks and failed inside the generator, in a worker, without the file."""
    from medwidit.training.synthetic import check_label_maps

    path = tmp_path / "odd_label.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), np.eye(4)), path)
    with pytest.raises(SynthesisError, match=r"odd_label.nii.gz: the label map must be one 3-D volume, got shape"):
        check_label_maps([{"label": str(path)}], 5)


def test_label_map_with_a_label_the_config_does_not_know_names_file_and_label(tmp_path):
    dm = _module(tmp_path, 1.0, synth_num_labels=4, synth_target_labels=TARGETS[:4])
    with pytest.raises(SynthesisError, match=r"head_label.nii.gz: label 4 is not one of the 4 generation labels"):
        dm.setup("fit")  # at setup, before any worker or cache starts
    dm = _module(tmp_path, 1.0)
    empty = np.zeros((24, 24, 24), np.uint8)  # on its scan's grid: the emptiness is what is wrong
    nib.save(nib.Nifti1Image(empty, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "real" / "head_label.nii.gz")
    with pytest.raises(SynthesisError, match=r"head_label.nii.gz: the label map is empty"):
        dm.setup("fit")


def test_a_label_map_whose_labels_vanish_on_the_working_grid_is_named_at_setup(tmp_path):
    """From a review: a 1 mm map whose only foreground was one voxel passed the setup check (its file is not empty),
    then failed in a DataLoader worker mid-training, reading "the label map is empty" of a file that is not."""
    from medwidit.training.synthetic import check_label_maps

    dm = _module(tmp_path, 1.0)
    dm.preprocessing = {**dm.preprocessing, "spacing": [2.0, 2.0, 2.0]}  # the working grid: 2 mm
    tiny = np.zeros((48, 48, 48), np.uint8)
    tiny[21, 21, 21] = 1  # between the 2 mm grid's voxel centres: nearest neighbour keeps none of it
    for name in ("head_label", "head_other_label", "head_image"):  # maps on their image's 1 mm grid
        nib.save(nib.Nifti1Image(tiny, np.eye(4)), tmp_path / "real" / f"{name}.nii.gz")
    with pytest.raises(
        SynthesisError,
        match=r"head_label.nii.gz: the label map is empty on the working grid \(\[2.*labels \[1\] are too small",
    ):
        dm.setup("fit")
    path = tmp_path / "real" / "head_label.nii.gz"
    tiny[20:24, 20:24, 20:24] = 1  # a 4 mm cube keeps its voxels
    nib.save(nib.Nifti1Image(tiny, np.eye(4)), path)
    check_label_maps([{"label": str(path)}], 5, TARGETS, dm.preprocessing)
    tiny[:] = 0
    tiny[4:44, 4:44, 4:44], tiny[21, 21, 21] = 3, 1  # the only task class (1 -> brain) lost, scalp kept
    nib.save(nib.Nifti1Image(tiny, np.eye(4)), path)
    lost = r"none of its labels \[0, 3\] on the working grid .* maps to .*; its labels \[1\] are too small"
    with pytest.raises(SynthesisError, match=lost):
        check_label_maps([{"label": str(path)}], 5, TARGETS, dm.preprocessing)
    check_label_maps([{"label": str(path)}], 5, TARGETS, PREPROCESSING_3D)  # no working grid: the file's own


def test_a_label_lost_on_the_working_grid_beside_others_kept_is_warned_of(tmp_path, caplog):
    """From a review: a map whose label 3 was one voxel at 1 mm trained on without a word on the 2 mm grid (the docs
    said such a map stops the run). The others are painted, so the run goes on; a warning names the file and label."""
    from medwidit.training.synthetic import check_label_maps

    preprocessing = {**PREPROCESSING_3D, "spacing": [2.0, 2.0, 2.0]}
    labels = np.zeros((48, 48, 48), np.uint8)
    labels[8:40, 8:40, 8:40], labels[21, 21, 21] = 1, 3  # brain kept, a one-voxel label 3 lost
    path = tmp_path / "map.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), path)
    check_label_maps([{"label": str(path)}], 5, TARGETS, preprocessing)
    assert f"{path}: its labels [3] are too small to keep a voxel on the working grid" in caplog.text
    assert "the generator never paints them" in caplog.text


def test_a_folder_given_as_a_data_list_is_named_as_a_folder(tmp_path):
    """From a review: ``--synth_data_list data`` (an existing folder) read "does not exist"."""
    with pytest.raises(ValueError, match=r"synth_data_list '.*' is a folder; give a JSON data list \(a file with a "):
        load_label_maps(tmp_path, "training")
    dm = _module(tmp_path, 0.0)
    dm.data_list = tmp_path / "real"
    with pytest.raises(ValueError, match=r"data_list '.*real' is a folder; give a JSON data list"):
        dm.setup("fit")


def test_a_sampler_ratio_out_of_range_or_over_no_volumes_is_named():
    """From a review: ratio 1.5 built and failed at the first draw ("invalid multinomial distribution"), naming
    nothing; a positive ratio over no synthetic volumes drew none, silently; True was read as a ratio of 1."""
    for ratio in (1.5, -0.1, float("nan"), True):
        with pytest.raises(ValueError, match=r"ratio must be in \[0.0, 1.0\]"):
            mixing_sampler(3, 4, ratio)
    with pytest.raises(ValueError, match="ratio 0.5 draws from both kinds, but there are 3 real and 0 synthetic"):
        mixing_sampler(3, 0, 0.5)
    with pytest.raises(ValueError, match="there are 0 real and 4 synthetic"):
        mixing_sampler(0, 4, 0.5)
    assert len(list(mixing_sampler(0, 4, 1.0))) == 4 and len(list(mixing_sampler(3, 0, 0.0))) == 3
    from medwidit.training.synthetic import check_synthesis

    with pytest.raises(ValueError, match="synth_ratio must be a number in \\[0, 1\\], got True"):
        check_synthesis(True, "list.json", 5, TARGETS)


def test_synthetic_crops_carry_spacing_with_spacing_conditioning(tmp_path):
    """The generator's thick slices are recorded for spacing conditioning: the 2 mm working grid (not the label map's
    affine as the random scaling leaves it), and the drawn thickness (2-3 voxels) along the thick axis of the half
    of the volumes that get one; the others' acquisition is the grid."""
    set_determinism(seed=0)
    try:
        dm = _module(tmp_path, 1.0, spacing_conditioning=True, synth_options={"thickness_range": (2.0, 3.0)})
        dm.setup("fit")
        loader = dm.train_dataloader()  # one batch an epoch: two label maps, two crops each
        spacing = torch.cat([next(iter(loader))["spacing"] for _ in range(6)])
    finally:
        set_determinism(seed=None)
    assert spacing.shape == (24, 6) and torch.equal(spacing[:, :3], torch.full((24, 3), 2.0))
    thick = (spacing[:, 3:] > 2.0).sum(dim=1)
    assert set(thick.tolist()) == {0, 1}  # some volumes thick along one axis, some not thick at all
    assert bool(
        ((spacing[:, 3:].amax(dim=1)[thick == 1] >= 4.0) & (spacing[:, 3:].amax(dim=1)[thick == 1] <= 6.0)).all()
    )


def test_synth_options_cut_the_non_target_labels_into_blobs_and_keep_the_task_classes(tmp_path):
    """`train.json`'s synth_options reach RandSubdivideLabelsd: the painted crops still hold the task's classes only
    (a cut part keeps its label's class), and the crops differ from those of the same seed without the cut."""
    crops = {}
    for name, options in (("plain", {}), ("cut", {"subdivide_labels": [3, 4], "subdivide_parts": 3})):
        set_determinism(0)
        dm = _module(tmp_path / name, 1.0, synth_options=options)
        dm.setup("fit")
        crops[name] = next(iter(dm.train_dataloader()))
        set_determinism(None)
    batch = crops["cut"]
    assert set(batch["label"].unique().tolist()) <= {0, 1} and (batch["label"] == 1).any()
    assert not torch.equal(batch["image"], crops["plain"]["image"])


def test_the_training_transforms_refuse_a_fractional_label_map_naming_it(tmp_path):
    """``synthetic_train_transforms`` cast the map to int64 before the generator's integer check: a brain label 1.5
    became 1 and the map trained as other labels (found by a review)."""
    from monai.transforms import Compose

    from medwidit.training.synthetic import synthetic_train_transforms

    path = tmp_path / "half_label.nii.gz"
    label = np.zeros((24, 24, 24), np.float32)
    label[6:18, 6:18, 6:18] = 1.5
    nib.save(nib.Nifti1Image(label, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    pipeline = Compose(
        synthetic_train_transforms(PREPROCESSING_3D, [16, 16, 16], num_crops=1, num_labels=5, target_labels=TARGETS)
    )
    with pytest.raises(RuntimeError) as error:  # MONAI's Compose wraps a transform's error, the cause kept
        pipeline({"label": str(path)})
    assert isinstance(error.value.__cause__, SynthesisError)
    assert "half_label.nii.gz: the label map must hold integer labels" in str(error.value.__cause__)
    label[6:18, 6:18, 6:18] = 2.0  # the same map with whole labels paints
    nib.save(nib.Nifti1Image(label, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    crop = pipeline({"label": str(path)})[0]
    assert crop["label"].dtype == torch.int64 and set(torch.unique(crop["label"]).tolist()) <= {0, 1}


def test_an_infinite_label_is_named_not_an_overflow(tmp_path):
    from medwidit.training.synthetic import check_label_maps

    path = tmp_path / "inf_label.nii.gz"
    label = np.ones((8, 8, 8), np.float32)
    label[0, 0, 0] = np.inf
    nib.save(nib.Nifti1Image(label, np.eye(4)), path)
    with pytest.raises(
        SynthesisError, match=r"inf_label.nii.gz: the label map must hold integer labels \(e.g. \[inf\]\)"
    ):
        check_label_maps([{"label": str(path)}], 5)


@pytest.mark.parametrize("entry", [None, 5, ["a.nii.gz"]])
def test_a_label_entry_that_is_not_a_path_is_named(tmp_path, entry):
    path = tmp_path / "maps.json"
    path.write_text(json.dumps({"training": [{"label": entry}]}))
    with pytest.raises(ValueError, match=r"synth_data_list .*maps.json', training\[0\]: label must be one file path"):
        load_label_maps(path, "training", base_dir=tmp_path)


def test_synth_num_labels_must_be_an_int(tmp_path):
    with pytest.raises(ValueError, match=r"synth_num_labels must be an int >= 2, got '5'"):
        _module(tmp_path, 0.5, synth_num_labels="5")


def test_a_label_check_against_the_settings_gets_no_build_hint(tmp_path, monkeypatch):
    """A map's label outside synth_num_labels, with the shipped list, said to rebuild data that is fine."""
    import medwidit.training.bundle as bundle
    from medwidit.training import MissingDataError, check_training_data

    dm = _module(tmp_path, 1.0, synth_num_labels=4, synth_target_labels=TARGETS[:4])
    monkeypatch.setattr(bundle, "_is_shipped_list", lambda path: True)
    with pytest.raises(MissingDataError, match=r"label 4 is not one of the 4 generation labels") as error:
        check_training_data(dm)
    assert "build the shipped data" not in str(error.value)
    (tmp_path / "real" / "head_label.nii.gz").unlink()  # a missing file of a shipped list still gets it
    with pytest.raises(MissingDataError, match=r"build the shipped data with"):
        check_training_data(dm)


def test_a_missing_split_of_label_maps_names_synth_key(tmp_path):
    """From a review: a synth_data_list without the split asked for pointed at train_key and val_key, which choose the
    real data list's splits; synth_key chooses this one."""
    path = _label_maps(tmp_path)
    with pytest.raises(ValueError, match=r"has no split 'heads' .*synth_key selects the split of label maps"):
        load_label_maps(path, "heads", base_dir=tmp_path)
