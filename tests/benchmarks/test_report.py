"""benchmarks/_report.py: a committed result that records a decision is not erased by a rerun of its script."""

import json

from benchmark_scripts import load_benchmark

report = load_benchmark("_report")


def test_a_result_with_a_recorded_decision_is_kept_and_the_rerun_written_beside_it(tmp_path, capsys):
    path = tmp_path / "validation_x.json"
    path.write_text(json.dumps({"summary": 1, "decision": {"rule": "written first", "result": "refused"}}))
    written = report.write_json({"summary": 2}, path)
    assert written == tmp_path / "validation_x.rerun.json" and json.loads(written.read_text()) == {"summary": 2}
    assert json.loads(path.read_text())["decision"]["result"] == "refused"  # the evidence stays
    assert "holds a recorded decision and is left as it is" in capsys.readouterr().out
    assert report.write_json({"summary": 3, "decision": "kept"}, path) == path  # a result with its own decision
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"summary": 1}))
    assert report.write_json({"summary": 4}, plain) == plain and json.loads(plain.read_text()) == {"summary": 4}
    assert report.write_json({"summary": 5}, tmp_path / "new" / "a.json") == tmp_path / "new" / "a.json"


def test_the_environment_names_simpleitk_and_files_not_yet_committed(tmp_path, monkeypatch):
    """The atlas prior's registration depends on SimpleITK, and a run may import a module not yet committed: both
    belong to what produced a result (a result of 0.7.0's first runs could not say either)."""
    import subprocess

    import SimpleITK as sitk
    import torch

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "new_module.py").write_text("")
    monkeypatch.setattr(report, "ROOT", tmp_path)  # a checkout of its own, not the shared tree
    env = report.environment(torch.device("cpu"), __file__)
    assert env["simpleitk"] == sitk.Version.VersionString()
    assert env["modified_files"] == ["?? new_module.py"]
