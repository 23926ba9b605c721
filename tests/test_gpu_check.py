"""tools/gpu_check.sh runs end to end on the CPU in its dry-run mode (same stages, cuda parts
skipped, tiny sizes), so the script that a rare GPU session runs cannot rot."""

import json
import re
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, DRY_RUN="1", OUT=str(tmp_path))
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=900)
    stages = (tmp_path / "device.txt").read_text()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("device", "tests", "sanitizer", "bench"):
        assert f"{name} ok" in stages, stages + "\n" + (tmp_path / "bench.log").read_text()
    files = {p.name for p in tmp_path.iterdir()}
    assert {"device.txt", "tests.log", "sanitizer.log", "gpu_bench.json", "gpu_bench.md", "largest.json"} <= files
    assert len(files) <= 8  # what comes back from the device machine
    bench = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert set(bench) == {"float32", "float64"}
    assert "energy" in (tmp_path / "sanitizer.log").read_text()
    tests = (tmp_path / "tests.log").read_text()  # the tests stage really ran tests (emulated CUDA kernels)
    assert re.search(r"\b[1-9]\d* passed", tests) and "failed" not in tests and "skipped" not in tests, tests
    assert json.loads((tmp_path / "largest.json").read_text())["largest"]["optimized"]["atoms"] > 0
