"""A corpus of bad inputs for every command: each ends in one line and leaves no partial output.

Every row of :data:`CASES` is one kind of bad input: ``(id, setup, argv, words)``. ``setup``
damages or creates files in a private working folder (:class:`Env`: a copy of the tiny 16³ data
set, a tiny run config and a copy of a tiny trained run); ``argv`` is the command line, its
``{data}``, ``{run}``, ``{cfg}``, ``{ckpt}`` and ``{tmp}`` filled in from the folder. Each case
asserts: exit code 1 (2 for an argparse usage error), exactly one stderr line starting
``wdm-bench CMD: error:``, every word of ``words`` in it (the offending file or flag and the
problem), no traceback, and the working folder unchanged afterwards (lock files aside).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.bad_input_cases import CASES
from tests.bad_input_setups import Case, Env, _undo_read_only
from tests.conftest import TINY_RUN
from wdm.cli import main
from wdm.train import train


# ------------------------------------------------------------------------------ the test
def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (but lock files) with its size and modification time."""
    out = {}
    for p in root.rglob("*"):
        if p.name.startswith(".") and p.name.endswith(".lock"):
            continue  # `train` / `sample` keep a lock file beside their output folder
        st = p.lstat()
        # a folder's own time changes with any temporary file made and removed in it: not compared
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns) if p.is_file() else (-1, 0)
    return out


@pytest.fixture(scope="module")
def _trained_once(phantom16, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    cfg = dict(TINY_RUN, training=dict(TINY_RUN["training"], steps=1, checkpoint_every=1))
    train(cfg, phantom16, run, progress=False)
    return run


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse usage errors
        return int(exc.code or 0)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, phantom16, _trained_once, tmp_path, monkeypatch, capsys):
    if case.needs_no_cuda and torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the 'no CUDA device' case does not apply")
    env = Env(tmp_path, phantom16, _trained_once)
    monkeypatch.chdir(env.tmp)
    try:
        if case.setup is not None:
            case.setup(env)
        argv = [env.fill(a) for a in case.argv]
        before = _snapshot(env.tmp)
        capsys.readouterr()
        code = _exit_code(argv)
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == case.code, f"exit code {code}, stderr {err}"
        assert len(err) == 1 and err[0].startswith(f"wdm-bench {argv[0]}: error: "), err
        assert "Traceback" not in err[0] and "internal error" not in err[0], err[0]
        for word in case.words:
            assert env.fill(word) in err[0], f"{word!r} not in: {err[0]}"
        assert _snapshot(env.tmp) == before, "the command left or changed files"
    finally:
        _undo_read_only(env.tmp / "ro")


def test_the_corpus_is_large_and_distinct():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 60
    assert {c.argv[0] for c in CASES} >= {
        "prepare", "train", "sample", "evaluate", "real-stats", "settings", "table", "figure", "curves",
        "compare", "convert-checkpoint", "profile", "memory-figure"}
