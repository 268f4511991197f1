"""Run one benchmark measurement in a fresh Python process, so peak memory and caches start clean for each."""

from __future__ import annotations

import json
import subprocess
import sys


def run_worker(script: str, spec: dict, timeout: float) -> dict:
    """``python script --worker <spec json>`` -> the JSON dict its last stdout line holds, or ``{"error": ...}``."""
    cmd = [sys.executable, script, "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        return {"error": "out of memory" if "out of memory" in proc.stderr.lower() else tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])
