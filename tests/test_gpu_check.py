"""The GPU check script (bench/gpu_check.sh) on the CPU: ``--cpu-smoke`` prints every check's row.

Tiny presets at 16^3-32^3 and a 2-process gloo DDP run; no speed is asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.gpu_check import CHECKS, DDP_NAME  # noqa: E402


def test_gpu_check_cpu_smoke_prints_every_row(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.txt"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--cpu-smoke", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["check", "status"])
    table = lines[header + 1:header + 1 + len(CHECKS) + 1]
    names = [spec[0] for spec in CHECKS] + [DDP_NAME]
    for name, line in zip(names, table, strict=True):
        assert line.strip().startswith(name), (name, line)
        assert line.strip()[len(name):].split()[0] == "ok", line
    assert "2 x cpu (gloo)" in table[-1]
    assert "2.55" in table[0] and "7.27" in table[2]  # the paper's values beside the sampling rows
    assert out.read_text().splitlines()[0].split()[:2] == ["check", "status"]
