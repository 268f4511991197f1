"""benchmarks/host_steps.py: the quick run writes its table, and every row's two ways give the same voxels."""

import json
import subprocess
import sys

from benchmark_scripts import BENCHMARKS


def test_quick_run_writes_equal_outputs_and_their_times(tmp_path):
    out = tmp_path / "host_steps.json"
    command = [sys.executable, str(BENCHMARKS / "host_steps.py"), "--shape", "40", "36", "30", "--output", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["step"] for r in rows] == ["median (torch)"] * 2 + ["region (6 mm)"] * 4 + ["post-processing"] * 2
    assert all(r["equal"] and r["seconds"] > 0 and r["scipy_seconds"] > 0 for r in rows)
    assert "region (6 mm)" in proc.stdout and "speed-up" in proc.stdout
