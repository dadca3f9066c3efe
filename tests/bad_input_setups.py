"""The working folder, the set-up helpers and the command lines of the bad-input corpus.

:class:`Env` is one case's private folder (a copy of the tiny 16³ data set, a tiny run config and
a copy of a tiny trained run); the ``_``-helpers damage or create files in it; the upper-case lists
are the command lines, their ``{data}``, ``{run}``, ``{cfg}``, ``{ckpt}`` and ``{tmp}`` filled in by
:meth:`Env.fill`. The cases are in ``tests/bad_input_cases.py``, the test in
``tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from tests.conftest import TINY_RUN
from wdm.data.prepare import split_files

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "paper_reference.csv"
_RNG = np.random.default_rng(0)
_GOOD = _RNG.random((16, 16, 16)).astype(np.float32)


class Env:
    """The private working folder of one case (the current directory while it runs)."""

    def __init__(self, tmp: Path, phantom: Path, trained: Path) -> None:
        self.tmp = tmp
        self.data = Path(shutil.copytree(phantom, tmp / "data"))
        self.run = Path(shutil.copytree(trained, tmp / "run"))
        self.cfg = tmp / "tiny.yaml"
        self.cfg.write_text(yaml.safe_dump(TINY_RUN))

    @property
    def ckpt(self) -> Path:
        return sorted((self.run / "checkpoints").glob("step_*.pt"))[-1]

    def train_file(self, i: int = 0) -> Path:
        return split_files(self.data, "train")[i]

    def fill(self, text: str) -> str:
        return text.format(data=self.data, run=self.run, cfg=self.cfg, ckpt=self.ckpt, tmp=self.tmp)


class Case(NamedTuple):
    """One kind of bad input."""

    id: str
    setup: Callable[[Env], None] | None
    argv: list[str]
    words: tuple[str, ...]
    code: int = 1
    needs_no_cuda: bool = False  # a "no CUDA device" case: skipped where a GPU is present


# ------------------------------------------------------------------------------ set-up helpers
def _nifti(path: Path, arr: np.ndarray, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))


def _sform(path: Path, affine: np.ndarray) -> None:
    """A float volume whose header affine (sform) is ``affine`` (nibabel refuses to build one)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(_GOOD.shape)
    hdr.set_data_dtype(np.float32)
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = affine[0], affine[1], affine[2]
    nib.save(nib.Nifti1Image(_GOOD, None, header=hdr), str(path))


def _train_vol(change: Callable[[Path], None], i: int = 0) -> Callable[[Env], None]:
    return lambda e: change(e.train_file(i))


def _array(a: np.ndarray) -> Callable[[Path], None]:
    return lambda p: _nifti(p, a)


def _bytes(content: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(content)


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3])


def _with(value: np.ndarray, where: tuple[int, int, int]) -> np.ndarray:
    a = _GOOD.copy()
    a[where] = value
    return a


def _file(name: str, content: str | bytes) -> Callable[[Env], None]:
    """Write ``tmp/name`` (folders created)."""
    def setup(e: Env) -> None:
        p = e.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())

    return setup


def _config(text: str) -> Callable[[Env], None]:
    return _file("bad.yaml", text)


def _tiny_yaml_with(old: str, new: str) -> Callable[[Env], None]:
    return _config(yaml.safe_dump(TINY_RUN).replace(old, new))


def _folder(name: str, *files: str) -> Callable[[Env], None]:
    def setup(e: Env) -> None:
        (e.tmp / name).mkdir(parents=True, exist_ok=True)
        for f in files:
            (e.tmp / name / f).write_text("x")

    return setup


def _all(*setups: Callable[[Env], None]) -> Callable[[Env], None]:
    def setup(e: Env) -> None:
        for s in setups:
            s(e)

    return setup


def _uniform_data(shape: tuple[int, int, int]) -> Callable[[Env], None]:
    """``tmp/u``: a data folder of three volumes of ``shape`` with its manifest."""
    def setup(e: Env) -> None:
        (e.tmp / "u" / "train").mkdir(parents=True)
        rows = ["file,split,shape,sha256"]
        for i in range(3):
            _nifti(e.tmp / "u" / "train" / f"v{i}.nii.gz", _RNG.random(shape).astype(np.float32))
            rows.append(f"train/v{i}.nii.gz,train,{'x'.join(map(str, shape))},0")
        (e.tmp / "u" / "manifest.csv").write_text("\n".join(rows) + "\n")

    return setup


def _remove_listed(e: Env) -> None:
    e.train_file(1).unlink()


def _manifest(text: bytes) -> Callable[[Env], None]:
    return lambda e: (e.data / "manifest.csv").write_bytes(text)


def _ckpt_device_cuda(e: Env) -> None:
    ckpt = torch.load(e.ckpt, weights_only=True)
    ckpt["config"]["sampling"]["device"] = "cuda"
    torch.save(ckpt, e.ckpt)


def _stats(name: str, **fields: np.ndarray) -> Callable[[Env], None]:
    def setup(e: Env) -> None:
        np.savez(e.tmp / name, **fields)

    return setup


def _npy(name: str) -> Callable[[Env], None]:
    """One ``.npy`` array under an ``.npz`` name."""
    def setup(e: Env) -> None:
        with open(e.tmp / name, "wb") as f:
            np.save(f, np.zeros(3))

    return setup


def _truncated_stats(e: Env) -> None:
    feats = _RNG.random((6, 8))
    _stats("rs.npz", features=feats, mu=feats.mean(0), sigma=np.cov(feats, rowvar=False),
           meta=np.array(json.dumps({"n_real": 6})))(e)
    _truncate(e.tmp / "rs.npz")


_PROFILE = json.dumps({"model": "wdm", "mode": "train", "resolution": 16, "status": "ok",
                       "peak_memory_gb": 0.5, "batch_size": 1})
_STEPS = "results/phantom-brain/16/wdm/steps/ddim_10/metrics.json"
_TABLE = "dataset,resolution,model,fid\nphantom-brain,16,wdm,1.0\n"
_REF_HEADER = "dataset,resolution,model,paper_model,metric,value,scale,unit,source,verified,note\n"


def _brats_case(name: str) -> Callable[[Env], None]:
    def setup(e: Env) -> None:
        d = e.tmp / "brats" / name
        d.mkdir(parents=True)
        (d / f"{name}-t1n.nii.gz").write_bytes(gzip.compress(b"not nifti at all" * 40))

    return setup


def _dicom_case(name: str) -> Callable[[Env], None]:
    def setup(e: Env) -> None:
        d = e.tmp / "lidc" / name / "study" / "series"
        d.mkdir(parents=True)
        for k in range(3):
            (d / f"1-{k:03d}.dcm").write_bytes(b"\0" * 50)

    return setup


def _read_only(e: Env) -> None:
    (e.tmp / "ro").mkdir()
    _make_read_only(e.tmp / "ro")



def _make_read_only(folder: Path) -> None:
    """Make ``folder`` unwritable, even for root (immutable flag); undone by :func:`_undo_read_only`."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("running as root without a working chattr: cannot make a folder read-only")


def _undo_read_only(folder: Path) -> None:
    if folder.is_dir():
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=False, capture_output=True)
        folder.chmod(0o755)



# ------------------------------------------------------------------------------ command lines
TRAIN = ["train", "--config", "{cfg}", "--data", "{data}", "--out", "{tmp}/out", "--no-progress"]
TRAIN_BAD = ["train", "--config", "{tmp}/bad.yaml", "--data", "{data}", "--out", "{tmp}/out",
             "--no-progress"]
SAMPLE = ["sample", "--run", "{run}", "--n", "1", "--seed", "0", "--out", "{tmp}/s", "--no-progress"]
EVAL = ["evaluate", "--real", "{data}/train", "--fake", "{data}/test", "--out", "{tmp}/m.json",
        "--depth", "10", "--weights", "none", "--n-bootstrap", "0"]
EVAL_STATS = ["evaluate", "--real-stats", "{tmp}/rs.npz", "--fake", "{data}/test", "--out",
              "{tmp}/m.json", "--depth", "10", "--weights", "none"]
RSTATS = ["real-stats", "--real", "{data}/train", "--out", "{tmp}/r.npz", "--depth", "10",
          "--weights", "none"]
SETTINGS = ["settings", "--section", "evaluation", "--out", "{tmp}/ev.yaml", "--json"]
PREP = ["prepare", "--dataset", "phantom-brain", "--size", "16", "--n-train", "2", "--n-test", "1",
        "--no-progress"]
BRATS = ["prepare", "--dataset", "brats", "--size", "16", "--n-test", "1", "--no-progress"]
LIDC = ["prepare", "--dataset", "lidc", "--size", "16", "--n-test", "1", "--no-progress"]
COMPARE = ["compare", "--out", "{tmp}/vs.csv", "--reference", str(REFERENCE)]
MEMFIG = ["memory-figure", "--csv", "{tmp}/mem.csv", "--out", "{tmp}/mem.png", "--profiles"]
PROFILE = ["profile", "--config", "{cfg}", "--mode", "train", "--out", "{tmp}/p.json"]
CONVERT = ["convert-checkpoint", "--config", "{cfg}", "--size", "16", "--out", "{tmp}/cv"]
SING = np.diag([1.0, 1.0, 0.0, 1.0])
NAN_AFF = np.where(np.eye(4) > 0, np.nan, 0.0)
