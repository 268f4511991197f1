"""Real-anatomy sources: shipped example, atlas mapping, orientation through affines, held-out splits.

Most tests use the shipped example and small synthetic volumes. The tests marked slow build the real cache
from PyPI and Debian (about 20-40 s; into $MEDWIDIT_CACHE when set, else a temporary folder) and check it.
"""

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

from medwidit.data import example
from medwidit.datasets.brain import atlas, fetch, head, sources

REPO = Path(__file__).resolve().parents[2]


#####################################################################################################
# shipped example
#####################################################################################################


def test_example_case_loads_with_its_licence():
    case = example.example_case()
    image, label = nib.load(case["image"]), nib.load(case["label"])
    assert case["task"] == "brain" and case["template"] == "colin27_1mm"
    assert image.shape == label.shape == (90, 108, 90)
    np.testing.assert_allclose(image.affine, label.affine)
    np.testing.assert_allclose(image.header.get_zooms(), (2.0, 2.0, 2.0))
    values = np.asarray(label.dataobj)
    assert set(np.unique(values).tolist()) == {0, 1}
    brain_ml = values.sum() * 8 / 1000  # 2 mm voxels are 8 uL
    assert 1200 < brain_ml < 2000, brain_ml  # an adult brain
    t1 = image.get_fdata()
    assert t1[values == 1].mean() > 2 * t1[values == 0].mean()  # brain is brighter than the rest on average
    licences = Path(case["image"]).parent / "LICENSES.md"
    text = licences.read_text()
    for spec in sources.EXAMPLES.values():
        assert spec["image"] in text and spec["label"] in text
    assert "BSD-3-Clause" in text and "Holmes" in text


def test_example_case_unknown_name_names_the_choices():
    with pytest.raises(ValueError, match="colin27_head_2mm"):
        example.example_case("colin")


def test_examples_are_small():
    total = sum(p.stat().st_size for p in example.EXAMPLES_DIR.rglob("*") if p.is_file())
    assert total < 5 * 2**20, total


def test_example_through_monai_keeps_a_shared_grid():
    case = example.example_case()
    load = Compose([LoadImaged(["image", "label"]), EnsureChannelFirstd(["image", "label"]),
                    Orientationd(["image", "label"], axcodes="LPS")])  # fmt: skip
    data = load({"image": case["image"], "label": case["label"]})
    assert data["image"].shape == data["label"].shape == (1, 90, 108, 90)
    np.testing.assert_allclose(data["image"].affine, data["label"].affine)
    # the same world point holds the same label before and after reorientation
    raw = nib.load(case["label"])
    world = np.array([10.0, -20.0, 30.0, 1.0])
    before = np.asarray(raw.dataobj)[tuple(np.rint(np.linalg.inv(raw.affine) @ world)[:3].astype(int))]
    after_vox = np.rint(np.linalg.inv(data["label"].affine.numpy()) @ world)[:3].astype(int)
    assert data["label"][0][tuple(after_vox)] == before


#####################################################################################################
# resampling and orientation
#####################################################################################################


def _reoriented(array, affine, order):
    """The same volume stored with axes permuted by `order` and flipped where order is negative."""
    axes = [abs(o) - 1 for o in order]
    data = np.transpose(array, axes)
    new = np.zeros((4, 4))
    new[3, 3] = 1.0
    new[:3, :3] = affine[:3, :3][:, axes]
    new[:3, 3] = affine[:3, 3]
    for i, o in enumerate(order):
        if o < 0:
            data = np.flip(data, axis=i)
            new[:3, 3] += new[:3, i] * (data.shape[i] - 1)
            new[:3, i] *= -1
    return np.ascontiguousarray(data), new


@pytest.mark.parametrize("order", [(-1, 2, 3), (1, -2, 3), (-1, -3, 2), (3, 1, 2)], ids=["LAS", "RPS", "LIA", "SRA"])
def test_resample_nearest_undoes_any_flip_or_permutation(order):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(9, 11, 7)).astype(np.uint8)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = [-7.0, -8.0, -5.0]
    stored, stored_affine = _reoriented(labels, affine, order)
    assert nib.aff2axcodes(stored_affine) != nib.aff2axcodes(affine)
    back = atlas.resample_nearest(stored, stored_affine, labels.shape, affine)
    np.testing.assert_array_equal(back, labels)


def test_resample_nearest_fills_outside_and_halves_resolution():
    source = np.arange(4 * 4 * 4, dtype=np.int32).reshape(4, 4, 4)
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    out = atlas.resample_nearest(source, np.eye(4), (3, 3, 3), coarse, fill=-1)
    assert out[0, 0, 0] == source[0, 0, 0] and out[1, 1, 1] == source[2, 2, 2]
    assert out[2, 2, 2] == -1  # world (4, 4, 4) lies outside the 0..3 source


def test_resample_nearest_rejects_bad_affine():
    with pytest.raises(ValueError, match="target_affine"):
        atlas.resample_nearest(np.zeros((2, 2, 2)), np.eye(4), (2, 2, 2), np.eye(3))


def test_downsample_mean_keeps_world_positions():
    array = np.zeros((8, 8, 8))
    array[2:4, 4:6, 6:8] = 1.0
    affine = np.eye(4)
    affine[:3, 3] = [-10.0, 5.0, 2.0]
    coarse, coarse_affine = atlas.downsample_mean(array, affine, 2)
    (idx,) = np.argwhere(coarse == 1.0)
    np.testing.assert_allclose((coarse_affine @ [*idx, 1])[:3], (affine @ [2.5, 4.5, 6.5, 1])[:3])


#####################################################################################################
# atlas -> tissue classes
#####################################################################################################


@pytest.mark.parametrize("name", sorted(atlas.ATLAS_TABLES))
def test_every_tissue_class_is_reached_and_only_those(name):
    table = atlas.tissue_table(name)
    assert table[0] == 0
    assert set(table.values()) == set(atlas.TISSUE_CLASSES)


def test_desikan_table_maps_known_structures():
    table = atlas.tissue_table("desikan_killiany")
    assert table[2] == table[41] == 2  # cerebral white matter
    assert table[1028] == table[2035] == 1  # superior frontal, insula
    assert {table[c] for c in (10, 11, 12, 13, 17, 18, 26, 49, 50, 51, 52, 53, 54, 58)} == {3}
    assert {table[c] for c in (4, 5, 14, 15, 24, 43, 44)} == {4}
    assert 1004 not in table and 3000 not in table  # not in aparc


def test_map_labels_refuses_unknown_codes():
    with pytest.raises(ValueError, match=r"\[999\]"):
        atlas.map_labels(np.array([0, 2, 999]), atlas.tissue_table("desikan_killiany"), source="demo.nii.gz")
    with pytest.raises(ValueError, match="integers"):
        atlas.map_labels(np.array([0.5]), atlas.tissue_table("desikan_killiany"))
    with pytest.raises(ValueError, match="atlas must be one of"):
        atlas.tissue_table("aal")


def test_tissue_label_is_orientation_free_and_follows_the_brain_mask():
    rng = np.random.default_rng(1)
    codes = np.array([0, 2, 41, 1028, 2035, 10, 49, 4, 43])
    values = codes[rng.integers(0, len(codes), size=(12, 10, 8))].astype(np.uint16)
    atlas_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    reference = nib.Nifti1Image(np.zeros((12, 10, 8), np.uint8), atlas_affine)
    brain = np.zeros((12, 10, 8), bool)
    brain[1:11, 1:9, 1:7] = True
    table = atlas.tissue_table("desikan_killiany")
    straight = sources.tissue_label(nib.Nifti1Image(values, atlas_affine), table, reference, brain)
    lia, lia_affine = _reoriented(values, atlas_affine, (-1, -3, 2))  # Desikan-Killiany's own storage
    assert "".join(nib.aff2axcodes(lia_affine)) == "LIA"
    flipped = sources.tissue_label(nib.Nifti1Image(lia, lia_affine), table, reference, brain)
    np.testing.assert_array_equal(straight, flipped)
    assert not straight[~brain].any()
    inside_unlabelled = brain & (values == 0)
    assert inside_unlabelled.any() and (straight[inside_unlabelled] == 4).all()
    assert straight.max() <= 4 and straight.dtype == np.uint8


def test_fill_holes_closes_enclosed_ventricles_only():
    mask = np.zeros((9, 9, 9), bool)
    mask[1:8, 1:8, 1:8] = True
    mask[3:6, 3:6, 3:6] = False  # an enclosed "ventricle"
    mask[4, 4, 0:2] = False  # a notch open to the outside stays open
    filled = sources.fill_holes(mask)
    assert filled[4, 4, 4] and not filled[4, 4, 1]


def test_brain_mask_squeezes_a_trailing_axis_of_length_one(tmp_path):
    """ROBEX's head and mask are stored (X, Y, Z, 1): the case is 3-D, and the squeezed image (held in memory, no
    scaling proxy) keeps its stored integer type."""
    t1 = np.arange(6 * 7 * 5, dtype=np.int16).reshape(6, 7, 5, 1)
    mask = np.zeros((6, 7, 5, 1), np.float32)
    mask[1:5, 2:6, 1:4] = 1.0
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    nib.save(nib.Nifti1Image(t1, affine), tmp_path / "t1.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), tmp_path / "mask.nii.gz")
    template = sources.Template("four_d", "four_d", "t1", "mask", True, "a 4-D pair")
    image, brain = sources.brain_mask(template, {"t1": tmp_path / "t1.nii.gz", "mask": tmp_path / "mask.nii.gz"})
    assert image.shape == (6, 7, 5) and brain.shape == (6, 7, 5) and brain.sum() == 4 * 4 * 3
    assert sources.stored_array(image).dtype == np.int16


#####################################################################################################
# data lists and the held-out rule
#####################################################################################################


@pytest.mark.parametrize("task", sorted(sources.TASKS))
def test_committed_data_list_matches_code_and_holds_out_a_template(task):
    path = REPO / "data_lists" / sources.TASKS[task]["data_list"]
    listing = json.loads(path.read_text())
    assert listing == json.loads(json.dumps(sources.data_list(task)))  # regenerate: `... sources lists`
    held_out = {item["anatomy"] for item in listing["test"]}
    assert held_out and held_out == set(listing["held_out_anatomies"])
    for key in ("training", "validation"):
        assert listing[key], key
        assert not held_out & {item["anatomy"] for item in listing[key]}, key
    assert listing["split_rationale"]
    labels = {int(k) for k in listing["labels"]}
    assert labels == set(range(len(labels)))


@pytest.mark.parametrize("key", ["training", "validation"])
def test_check_split_catches_a_leak(key):
    listing = sources.data_list("tissue")
    listing[key] = listing[key] + listing["test"]
    with pytest.raises(ValueError, match=key):
        sources.check_split(listing)
    with pytest.raises(ValueError, match="no test item"):
        sources.check_split({"training": listing["training"], "test": []})


def test_data_lists_resolve_against_a_base_dir(tmp_path):
    for spec in sources.TASKS.values():
        items = load_decathlon_datalist(REPO / "data_lists" / spec["data_list"], data_list_key="test",
                                        base_dir=tmp_path)  # fmt: skip
        assert all(item["image"].startswith(str(tmp_path)) and item["label"].startswith(str(tmp_path))
                   for item in items)  # fmt: skip
        assert all(not str(item["template"]).startswith(str(tmp_path)) for item in items)


def test_cache_dir_argument_environment_default(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDWIDIT_CACHE", str(tmp_path / "env"))
    assert sources.default_cache_dir() == tmp_path / "env"
    assert sources.default_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("MEDWIDIT_CACHE")
    assert sources.default_cache_dir() == Path.home() / ".cache" / "medwidit"


def test_bad_names_are_errors(tmp_path):
    with pytest.raises(ValueError, match="valid keys"):
        fetch.fetch_files(tmp_path, ["colin"])
    with pytest.raises(ValueError, match="task"):
        sources.build(tmp_path, ("brains",))
    with pytest.raises(ValueError, match="not part of task"):
        sources.build_case("brain", "icbm2009c_1mm", {}, tmp_path)


def test_every_source_file_is_pinned():
    for key, source in fetch.FILES.items():
        assert source.package in fetch.PACKAGES, key
        assert len(source.sha256) == 64, key
    used = {f for t in sources.TEMPLATES.values() for f in (t.t1, t.brain, *(t.tissue_maps or ())) if f}
    assert used | {sources.TISSUE_ATLAS, *sources.EXTRA_ATLASES} <= set(fetch.FILES)


#####################################################################################################
# the real cache, built from the registries (network, ~20-40 s)
#####################################################################################################


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = os.environ.get("MEDWIDIT_CACHE") or tmp_path_factory.mktemp("medwidit-cache")
    return sources.build(root)


@pytest.mark.slow
def test_built_cases_share_grids_and_label_ranges(cache):
    manifest = json.loads((cache / "MANIFEST.json").read_text())
    for task, spec in sources.TASKS.items():
        listing = sources.data_list(task)
        for item in (i for key in ("training", "validation", "test") for i in listing[key]):
            image, label = nib.load(cache / item["image"]), nib.load(cache / item["label"])
            assert image.shape == label.shape, item
            np.testing.assert_allclose(image.affine, label.affine, err_msg=item["image"])
            values = np.asarray(label.dataobj)
            assert values.dtype == np.uint8 and set(np.unique(values)) == set(spec["labels"]), item["label"]
            entry = manifest["cases"][f"{task}/{item['template']}"]
            assert entry["label"]["content_sha256"] == sources.content_hash(cache / item["label"])
            if task == "tissue":  # the image is brain-extracted: zero exactly where the label is background
                assert not np.asarray(image.dataobj)[values == 0].any(), item["image"]
            if task == "head":  # its brain (labels 1-4) is exactly the brain task's mask of the same template
                mask = np.asarray(nib.load(cache / "brain" / f"{item['template']}_label.nii.gz").dataobj)
                np.testing.assert_array_equal(np.isin(values, head.BRAIN_LABELS), mask > 0, err_msg=item["label"])


@pytest.mark.slow
def test_mapping_covers_every_value_in_the_installed_atlases(cache):
    raw = fetch.fetch_files(cache / "raw", [sources.TISSUE_ATLAS, *sources.EXTRA_ATLASES])
    for name, path in raw.items():
        present = set(np.unique(np.asarray(nib.load(path).dataobj)).tolist())
        assert present <= set(atlas.tissue_table(name)), (name, present - set(atlas.tissue_table(name)))
        listed = {int(line.split(",")[0]) for line in (path.parent / f"labels_{name}.csv").read_text().split()[1:]}
        assert listed <= set(atlas.tissue_table(name)), name


@pytest.mark.slow
def test_real_atlas_in_canonical_orientation_gives_the_same_labels(cache):
    raw = fetch.fetch_files(cache / "raw", ["desikan_killiany", "icbm2009c_brain"])
    dk = nib.load(raw["desikan_killiany"])  # stored LIA
    canonical = nib.as_closest_canonical(dk)  # the same atlas stored RAS
    assert nib.aff2axcodes(dk.affine) != nib.aff2axcodes(canonical.affine)
    t1 = nib.load(raw["icbm2009c_brain"])
    brain = np.asarray(t1.dataobj) > 0
    table = atlas.tissue_table("desikan_killiany")
    np.testing.assert_array_equal(sources.tissue_label(dk, table, t1, brain),
                                  sources.tissue_label(canonical, table, t1, brain))  # fmt: skip


@pytest.mark.slow
def test_shipped_example_is_reproduced_from_the_cache(cache, tmp_path):
    made = sources.build_examples(cache, tmp_path)
    for name, spec in sources.EXAMPLES.items():
        for key in ("image", "label"):
            assert sources.content_hash(made[f"{name}/{key}"]) == sources.content_hash(example.EXAMPLES_DIR / spec[key])


@pytest.mark.parametrize("name", ["brain_extraction", "tissue_classes"])
def test_data_list_keys_do_not_collide_with_monai_meta_keys(name):
    """MONAI dictionary transforms read "<key>_<postfix>" as metadata of <key>: "label_atlas" broke Spacingd."""
    listing = json.loads((sources.REPO_DATA_LISTS / f"{name}.json").read_text())
    for split in ("training", "validation", "test"):
        for item in listing[split]:
            clashes = [k for k in item if k != "image" and k != "label" and k.startswith(("image_", "label_"))]
            assert not clashes, f"{name}.json {split}: keys {clashes} would be taken for MONAI metadata"


def test_atlas_dice_on_monai_equals_the_counting_formula_it_replaced():
    def counted(a, b, names):  # the hand-written Dice this replaced
        out = {}
        for k, name in names.items():
            both, total = np.count_nonzero((a == k) & (b == k)), np.count_nonzero(a == k) + np.count_nonzero(b == k)
            out[name] = round(2.0 * both / total, 4) if total else float("nan")
        return out

    rng, names = np.random.default_rng(0), {1: "x", 2: "y", 3: "z", 4: "absent"}
    for trial in range(30):
        a = rng.integers(0, 4, (20, 17, 13))
        b = np.where(rng.random(a.shape) < rng.random(), rng.integers(0, 4, a.shape), a)
        if trial % 3 == 0:  # class 2 only in a: Dice 0; class 4 in neither: NaN
            b[b == 2] = 1
        assert json.dumps(atlas.atlas_dice(a, b, names)) == json.dumps(counted(a, b, names))


def test_the_builder_runs_as_a_module_under_its_own_name():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "medwidit.datasets.brain", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "usage: python -m medwidit.datasets.brain" in run.stdout
