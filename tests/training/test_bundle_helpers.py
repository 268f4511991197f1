"""training/bundle: where a bundle lives, the network MONAI's tools see, and case results."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from training_volumes import tiny_segmenter

from medwidit.diffusion import save_segmenter
from medwidit.diffusion.encoding import to_probabilities
from medwidit.training import SegmentationNetwork, find_bundle_root, require_done

NAME = "brain_widit_segmentation"


def _bundle(tmp_path: Path) -> Path:
    (tmp_path / "b" / "configs").mkdir(parents=True)
    (tmp_path / "b" / "configs" / "metadata.json").write_text("{}")
    return tmp_path / "b"


@pytest.mark.parametrize(
    "form",
    ["{c}", "['{c}', '{o}']", "[{c},{o}]", "={c}"],
    ids=["path", "list", "bare-list", "equals"],
)
def test_bundle_root_follows_config_file(tmp_path, form):
    bundle = _bundle(tmp_path)
    config, other = bundle / "configs" / "train.json", bundle / "configs" / "multi_gpu_train.json"
    value = form.format(c=config, o=other)
    argv = (
        ["monai.bundle", "run", "training", f"--config_file{value}"]
        if value.startswith("=")
        else ["monai.bundle", "run", "training", "--config_file", value, "--epochs", "2"]
    )
    assert find_bundle_root(NAME, argv) == str(bundle.resolve())


def test_bundle_root_falls_back_to_the_checkout_and_fails_clearly(tmp_path, caplog):
    """The fallback says why: a ConfigParser read by hand from a copied bundle took the shipped bundle's weights and
    output folder without a word."""
    checkout = str(Path(__file__).resolve().parents[2] / "bundles" / NAME)
    with caplog.at_level("WARNING", logger="medwidit.training.bundle"):
        assert find_bundle_root(NAME, ["pytest"]) == checkout
    assert [r.getMessage() for r in caplog.records] == [
        "bundle_root: no MONAI workflow runs this config and no --config_file names a bundle's configs/ file; using "
        f"the shipped bundle {checkout} (to choose another: --bundle_root DIR, or parser['bundle_root'] = DIR for a "
        "ConfigParser)."
    ]
    # a config file outside any bundle's configs/ folder does not count
    assert find_bundle_root(NAME, ["x", "--config_file", str(tmp_path / "a.json")]) == checkout
    with pytest.raises(FileNotFoundError, match="--bundle_root"):
        find_bundle_root("no_such_bundle", ["pytest"])


def test_bundle_root_is_the_bundle_a_python_workflow_runs(tmp_path, capsys):
    """monai.bundle.run / load from Python (and ConfigWorkflow, --args_file) put no --config_file in sys.argv: a
    copied bundle's configs read the shipped bundle's weights and wrote into its eval/ folder."""
    import shutil

    import monai.bundle

    shipped = Path(__file__).resolve().parents[2] / "bundles" / NAME
    copy = tmp_path / "copy"
    shutil.copytree(shipped / "configs", copy / "configs")
    monai.bundle.run(
        run_id="show",
        config_file=str(copy / "configs" / "inference.json"),
        show="$print('ROOTS', @bundle_root, @ckpt_path, @output_dir)",
    )
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("ROOTS"))
    root = str(copy.resolve())
    assert line.split()[1:] == [root, root + "/models/model.pt", root + "/eval"]


def test_bundle_datalist_checks_labels_for_evaluation_and_names_an_empty_split(tmp_path):
    """evaluate.json segmented every case, then failed on a missing "label" (KeyError naming nothing) or label file;
    an empty split was an IndexError inside MONAI."""
    from medwidit.training import MissingDataError, bundle_datalist

    (tmp_path / "scan.nii.gz").write_bytes(b"")
    lists = {
        "nolabel.json": {"test": [{"image": "scan.nii.gz"}]},
        "missing.json": {"test": [{"image": "scan.nii.gz", "label": "gone.nii.gz"}]},
        "empty.json": {"test": []},
    }
    for name, content in lists.items():
        (tmp_path / name).write_text(json.dumps(content))
    assert len(bundle_datalist(tmp_path / "nolabel.json", "test", tmp_path)) == 1  # inference needs no label
    for name, match in (
        ("nolabel.json", r"1 case\(s\) of nolabel.json \[test\] have no \"label\" to evaluate against"),
        ("missing.json", r"1 label file\(s\) of missing.json \[test\] are not in .*gone.nii.gz"),
        ("empty.json", r"split 'test' of data list .*empty.json is empty"),
    ):
        with pytest.raises(MissingDataError, match=match):
            bundle_datalist(tmp_path / name, "test", tmp_path, labels=True)


def test_a_new_run_in_an_earlier_runs_checkpoint_folder_is_refused_unless_asked(tmp_path, caplog):
    """It replaced last.ckpt after an epoch while the old best.ckpt lived on until the first validation, so an export
    in between took the old weights; the bundle's training now refuses, naming --resume, --output_dir and
    --overwrite_run."""
    from medwidit.training import check_run_folder

    folder = tmp_path / "checkpoints"
    check_run_folder(folder, None)  # no folder yet
    folder.mkdir()
    (folder / "notes.txt").write_text("")
    check_run_folder(folder, None)  # no checkpoint in it
    for name in ("best.ckpt", "last.ckpt"):
        (folder / name).write_bytes(b"")
    with pytest.raises(ValueError, match=r"earlier run's checkpoints \(best.ckpt, last.ckpt\): .*--resume last"):
        check_run_folder(folder, None, "false")
    check_run_folder(folder, "last")  # resuming that run
    assert (folder / "best.ckpt").exists()
    check_run_folder(folder, None, "true")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"] and "removed" in caplog.text


def test_missing_training_data_is_one_line_before_fit(tmp_path):
    """The data module's check ran inside trainer.fit, inside MONAI's config expression: an 88-line traceback with
    the useful line in its middle. train.json's first training step now raises it as one line (a SystemExit)."""
    from training_volumes import PREPROCESSING_3D, write_dataset

    from medwidit.training import MissingDataError, SegmentationDataModule, check_training_data

    data_list = write_dataset(tmp_path, shape=(16, 16, 16), num_classes=2)
    module = SegmentationDataModule(data_list=data_list, preprocessing=PREPROCESSING_3D, roi_size=[8, 8, 8])
    check_training_data(module)  # all there
    next(tmp_path.glob("*_image.nii.gz")).unlink()
    module = SegmentationDataModule(data_list=data_list, preprocessing=PREPROCESSING_3D, roi_size=[8, 8, 8])
    with pytest.raises(MissingDataError, match=r"^medwidit: error: data_list .* which does not exist\.$"):
        check_training_data(module)
    parser_training = json.loads((Path(__file__).resolve().parents[2] / "bundles" / NAME / "configs" / "train.json")
                                 .read_text())["training"]  # fmt: skip
    check = parser_training.index("$medwidit.training.check_training_data(@datamodule)")
    assert check < next(i for i, step in enumerate(parser_training) if ".fit(" in step)  # before any training


def test_segmentation_network_shares_the_net_weights_under_their_own_names(tmp_path):
    segmenter = tiny_segmenter(num_classes=3)
    network = SegmentationNetwork(segmenter, steps=2, num_samples=2, seed=3)
    assert list(network.state_dict()) == list(segmenter.net.state_dict())
    # a medwidit checkpoint's state_dict loads into it as is (ckpt_export --key_in_ckpt state_dict)
    other = tiny_segmenter(num_classes=3)
    torch.nn.init.normal_(other.net.final_layer.linear.weight)
    save_segmenter(other, tmp_path / "model.pt")
    network.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"])
    assert torch.equal(segmenter.net.final_layer.linear.weight, other.net.final_layer.linear.weight)
    image = torch.randn(1, 1, 8, 8, 8)
    out = network(image)
    assert out.shape == (1, 3, 8, 8, 8) and torch.allclose(out.sum(1), torch.ones(1, 8, 8, 8), atol=1e-5)
    assert torch.equal(out, network(image))  # seeded: one call is one deterministic segmentation


def test_segmentation_network_shares_steps_as_the_segmenter_does():
    """inference.json's network_def (monai.bundle.load, MONAI Label) samples with the CLI's shared_steps: the same
    probabilities as DiffusionSegmenter.sample(shared_steps=...) from the same seed, not independent samples."""
    segmenter = tiny_segmenter(num_classes=2)
    torch.nn.init.normal_(segmenter.net.final_layer.linear.weight, std=0.5)  # a network that reads its input
    image = torch.randn(1, 1, 8, 8, 8)
    network = SegmentationNetwork(segmenter, steps=3, num_samples=2, shared_steps=2, seed=5)
    samples = segmenter.sample(
        image, steps=3, num_samples=2, shared_steps=2, generator=torch.Generator().manual_seed(5)
    )
    expected = to_probabilities(samples, dim=2).mean(dim=0)
    assert torch.allclose(network(image), expected)
    independent = SegmentationNetwork(segmenter, steps=3, num_samples=2, seed=5)(image)
    assert not torch.allclose(independent, expected)  # the option reaches the sampler
    with pytest.raises(ValueError, match=r"shared_steps must be in 0..2 \(fewer than steps\), got 3"):
        SegmentationNetwork(segmenter, steps=3, num_samples=2, shared_steps=3)


def test_require_done_names_failed_cases():
    done = SimpleNamespace(name="a", status="done", message=None)
    failed = SimpleNamespace(name="b", status="failed", message="b.nii.gz: truncated file")
    assert require_done([done]) == [done]
    with pytest.raises(RuntimeError, match=r"(?s)1 of 2 case.*b: b.nii.gz: truncated file"):
        require_done([done, failed])
    with pytest.raises(RuntimeError, match="empty"):
        require_done([])


def test_refuse_renamed_names_the_new_key_and_knows_its_keys():
    from medwidit.training import refuse_renamed

    refuse_renamed(steps=None)
    with pytest.raises(ValueError, match="'steps' is now 'val_steps'"):
        refuse_renamed(steps=3)
    with pytest.raises(ValueError, match="knows"):
        refuse_renamed(stpes=3)
    # Lightning's name for train.json's "epochs": `--max_epochs 1` ran all 1080 steps without a word
    with pytest.raises(ValueError, match=r"'max_epochs' is now 'epochs' \(--epochs 1\)"):
        refuse_renamed(steps=None, max_epochs=1)
