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
from wdm.cli import main
from wdm.data.prepare import split_files
from wdm.train import train

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

# (id, setup, argv, words[, exit code[, needs_no_cuda]])
CASES: list[Case] = [
    # -- NIfTI volumes of a prepared data folder (train) -------------------------------------
    Case("vol-truncated", _train_vol(_truncate), TRAIN, ("phantom-brain_0000", "not a readable NIfTI")),
    Case("vol-not-nifti", _train_vol(_bytes(gzip.compress(b"text, not a NIfTI volume" * 20))),
         TRAIN, ("phantom-brain_0000", "not a readable NIfTI")),
    Case("vol-empty-file", _train_vol(_bytes(b"")), TRAIN, ("phantom-brain_0000", "not a readable NIfTI")),
    Case("vol-2d", _train_vol(_array(_GOOD[0])), TRAIN, ("phantom-brain_0000", "3D")),
    Case("vol-4d", _train_vol(_array(np.stack([_GOOD, _GOOD], -1))), TRAIN, ("phantom-brain_0000", "3D")),
    Case("vol-nan", _train_vol(_array(_with(np.nan, (3, 4, 5)))), TRAIN, ("phantom-brain_0000", "NaN")),
    Case("vol-inf", _train_vol(_array(_with(np.inf, (0, 0, 0)))), TRAIN, ("phantom-brain_0000", "NaN/Inf")),
    Case("vol-constant", _train_vol(_array(np.full((16, 16, 16), 0.5, np.float32))), TRAIN,
         ("phantom-brain_0000", "constant")),
    Case("vol-int16", _train_vol(_array((_GOOD > 0.5).astype(np.int16))), TRAIN,
         ("phantom-brain_0000", "float")),
    Case("vol-uint8", _train_vol(_array((_GOOD > 0.5).astype(np.uint8))), TRAIN,
         ("phantom-brain_0000", "float")),
    Case("vol-out-of-range", _train_vol(_array(_GOOD * 3)), TRAIN, ("phantom-brain_0000", "[0, 1]")),
    Case("vol-other-shape", _train_vol(_array(_GOOD[:, :, :14]), i=1), TRAIN,
         ("phantom-brain_0001", "shape")),
    Case("vol-affine-singular", _train_vol(lambda p: _sform(p, SING)), TRAIN,
         ("phantom-brain_0000", "singular affine")),
    Case("vol-affine-nan", _train_vol(lambda p: _sform(p, NAN_AFF)), TRAIN,
         ("phantom-brain_0000", "affine", "NaN/Inf")),
    Case("vol-listed-missing", _remove_listed, TRAIN, ("phantom-brain_0001", "not found")),
    Case("data-odd-shape", _uniform_data((15, 15, 15)), [*TRAIN[:3], "--data", "{tmp}/u", *TRAIN[5:]],
         ("v0.nii.gz", "even")),
    Case("data-tiny-shape", _uniform_data((2, 2, 2)), [*TRAIN[:3], "--data", "{tmp}/u", *TRAIN[5:]],
         ("v0.nii.gz", "divisible")),
    Case("data-missing", None, [*TRAIN[:3], "--data", "{tmp}/nodata", *TRAIN[5:]],
         ("nodata", "manifest.csv")),
    Case("data-is-a-file", None, [*TRAIN[:3], "--data", "{cfg}", *TRAIN[5:]], ("tiny.yaml", "manifest.csv")),
    Case("data-empty-folder", _folder("empty"), [*TRAIN[:3], "--data", "{tmp}/empty", *TRAIN[5:]],
         ("empty", "manifest")),
    Case("manifest-not-utf8", _manifest(b"file,split,shape,sha256\n\xff\xfe\n"), TRAIN,
         ("manifest.csv", "not UTF-8")),
    Case("manifest-columns", _manifest(b"name,kind\na,b\n"), TRAIN, ("manifest.csv", "expected columns")),
    # -- run configs (YAML) ---------------------------------------------------------------------
    Case("cfg-not-utf8", _config(b"training:\n  lr: \xff\xfe\n"), TRAIN_BAD, ("bad.yaml", "not UTF-8")),
    Case("cfg-empty", _config(""), TRAIN_BAD, ("bad.yaml", "empty config")),
    Case("cfg-null", _config("null\n"), TRAIN_BAD, ("bad.yaml", "empty config")),
    Case("cfg-list", _config("[]\n"), TRAIN_BAD, ("bad.yaml", "expected a mapping")),
    Case("cfg-zero", _config("0\n"), TRAIN_BAD, ("bad.yaml", "expected a mapping")),
    Case("cfg-false", _config("false\n"), TRAIN_BAD, ("bad.yaml", "expected a mapping")),
    Case("cfg-dup-section", _config("training:\n  steps: 2\nmodel: wdm\ntraining:\n  steps: 3\n"), TRAIN_BAD,
         ("bad.yaml", "duplicate key 'training'", "lines 1 and 4")),
    Case("cfg-dup-field", _config("training:\n  lr: 0.001\n  steps: 2\n  lr: 0.002\n"), TRAIN_BAD,
         ("bad.yaml", "duplicate key 'lr'", "lines 2 and 4")),
    Case("cfg-bad-yaml", _config("training: [steps: 2\n"), TRAIN_BAD, ("bad.yaml", "not valid YAML")),
    Case("cfg-missing", None, TRAIN_BAD, ("bad.yaml", "not found")),
    Case("cfg-is-folder", _folder("bad.yaml"), TRAIN_BAD, ("bad.yaml", "is a folder")),
    Case("cfg-unknown-key", _config("trainig:\n  steps: 3\n"), TRAIN_BAD,
         ("bad.yaml", "'trainig' was unexpected")),
    Case("cfg-wrong-type", _config("training:\n  steps: many\n"), TRAIN_BAD, ("bad.yaml", "training.steps")),
    Case("cfg-negative-lr", _config("training:\n  lr: -1.0e-4\n"), TRAIN_BAD, ("bad.yaml", "training.lr")),
    Case("cfg-unknown-model", _config("model: foo\n"), TRAIN_BAD, ("bad.yaml", "unknown model 'foo'")),
    Case("cfg-network-too-deep", _tiny_yaml_with("preset: tiny", "preset: wdm-128"), TRAIN_BAD,
         ("bad.yaml", "phantom-brain_0000", "do not suit model", "divisible")),
    Case("cfg-device-cuda", _tiny_yaml_with("device: cpu", "device: cuda"), TRAIN_BAD,
         ("bad.yaml", "no CUDA device"), needs_no_cuda=True),
    # -- train command line -----------------------------------------------------------------------
    Case("train-out-is-file", None, [*TRAIN[:5], "--out", "{cfg}"], ("tiny.yaml", "not a folder")),
    Case("train-out-is-data", None, [*TRAIN[:5], "--out", "{data}"], ("--out", "data folder")),
    Case("train-out-read-only", _read_only, [*TRAIN[:5], "--out", "{tmp}/ro/run", "--no-progress"],
         ("ro/run", "permission denied")),
    Case("train-threads-0", None, [*TRAIN, "--threads", "0"], ("--threads", ">= 1"), code=2),
    Case("train-stage", None, [*TRAIN, "--stage", "vqgan"], ("tiny.yaml", "stage 'vqgan'")),
    Case("train-over-checkpoints", None, [*TRAIN[:5], "--out", "{run}", "--no-progress"],
         ("run", "holds checkpoints already")),
    # -- checkpoints and sample ---------------------------------------------------------------------
    Case("ckpt-truncated", lambda e: _truncate(e.ckpt), SAMPLE, ("step_", "not a readable checkpoint")),
    Case("ckpt-empty", lambda e: e.ckpt.write_bytes(b""), SAMPLE, ("step_", "not a readable checkpoint")),
    Case("ckpt-foreign", lambda e: torch.save({"state_dict": {}}, e.ckpt), SAMPLE,
         ("step_", "not a wdm-bench checkpoint")),
    Case("ckpt-device-cuda", _ckpt_device_cuda, SAMPLE, ("run", "sampling.device", "no CUDA device"),
         needs_no_cuda=True),
    Case("sample-device-cuda", None, [*SAMPLE, "--device", "cuda"], ("--device cuda", "no CUDA device"),
         needs_no_cuda=True),
    Case("sample-n-0", None, [*SAMPLE[:3], "--n", "0", *SAMPLE[5:]], ("--n", "at least 1")),
    Case("sample-seed-negative", None, [*SAMPLE[:5], "--seed", "-1", *SAMPLE[7:]], ("--seed", ">= 0"),
         code=2),
    Case("sample-steps-0", None, [*SAMPLE, "--steps", "0"], ("sampling.steps", "minimum of 1")),
    Case("sample-steps-above-T", None, [*SAMPLE, "--steps", "5000"], ("sampling.steps", "exceeds")),
    Case("sample-batch-0", None, [*SAMPLE, "--batch-size", "0"], ("sampling.batch_size", "minimum of 1")),
    Case("sample-sampler", None, [*SAMPLE, "--sampler", "euler"], ("--sampler", "invalid choice"), code=2),
    Case("sample-run-is-file", None, [*SAMPLE[:1], "--run", "{cfg}", *SAMPLE[3:]],
         ("tiny.yaml", "is a file")),
    Case("sample-run-missing", None, [*SAMPLE[:1], "--run", "{tmp}/norun", *SAMPLE[3:]],
         ("norun", "no checkpoint")),
    Case("sample-out-is-file", None, [*SAMPLE[:7], "--out", "{cfg}"], ("tiny.yaml", "not a folder")),
    Case("sample-out-foreign", None, [*SAMPLE[:7], "--out", "{data}/train"], ("train", "not samples")),
    # -- evaluate -----------------------------------------------------------------------------------
    Case("eval-device-cuda", None, [*EVAL, "--device", "cuda"], ("--device cuda", "no CUDA device"),
         needs_no_cuda=True),
    Case("eval-device-unknown", None, [*EVAL, "--device", "gpu0"], ("--device gpu0", "not a torch device")),
    Case("eval-n-fake-0", None, [*EVAL, "--n-fake", "0"], ("--n-fake", "N >= 1"), code=2),
    Case("eval-n-fake-too-many", None, [*EVAL, "--n-fake", "10"], ("test", "fewer")),
    Case("eval-kernel-1", None, [*EVAL, "--kernel-size", "1"], ("kernel_size", "minimum of 3")),
    Case("eval-kernel-negative", None, [*EVAL, "--kernel-size", "-3"], ("kernel_size", "minimum of 3")),
    Case("eval-ci-level", None, [*EVAL, "--ci-level", "1.5"], ("ci_level", "1.5")),
    Case("eval-n-bootstrap-1", None, [*EVAL[:-2], "--n-bootstrap", "1"], ("n_bootstrap", ">= 2")),
    Case("eval-depth", None, [*EVAL, "--depth", "11"], ("depth", "11")),
    Case("eval-protocol", None, [*EVAL, "--protocol", "foo"], ("protocol", "'foo'")),
    Case("eval-real-missing", None, [EVAL[0], "--real", "{tmp}/none", *EVAL[3:]], ("none", "not a folder")),
    Case("eval-fake-missing", None, [*EVAL[:3], "--fake", "{tmp}/none", *EVAL[5:]], ("none", "not a folder")),
    Case("eval-fake-no-volumes", _folder("nofakes", "a.txt"),
         [*EVAL[:3], "--fake", "{tmp}/nofakes", *EVAL[5:]],
         ("nofakes", "no NIfTI volumes")),
    Case("eval-fake-singular-affine", lambda e: _sform(e.data / "test" / "phantom-brain_0006.nii.gz", SING),
         EVAL, ("phantom-brain_0006", "singular affine")),
    Case("eval-no-real", None, EVAL[:1] + EVAL[3:], ("--real", "--real-stats")),
    Case("eval-real-listed-missing", _remove_listed, EVAL, ("phantom-brain_0001", "listed in",
                                                            "manifest.csv", "missing")),
    Case("eval-real-manifest-not-utf8", _manifest(b"file,split,shape,sha256\n\xff\n"), EVAL,
         ("manifest.csv", "not UTF-8")),
    Case("eval-out-is-config", _config("evaluation: {}\n"), [*EVAL[:5], "--out", "{tmp}/bad.yaml", *EVAL[7:],
                                                             "--config", "{tmp}/bad.yaml"],
         ("bad.yaml", "also reads or writes")),
    Case("eval-out-is-a-volume", None, [*EVAL[:5], "--out", "{data}/test/m.nii.gz", *EVAL[7:]],
         ("m.nii.gz", "read as one of its volumes")),
    Case("eval-out-is-folder", _folder("mdir"), [*EVAL[:5], "--out", "{tmp}/mdir", *EVAL[7:]],
         ("mdir", "is a folder")),
    Case("eval-config-not-utf8", _config(b"\xff\xfe"), [*EVAL, "--config", "{tmp}/bad.yaml"],
         ("bad.yaml", "not UTF-8")),
    Case("eval-config-empty", _config(""), [*EVAL, "--config", "{tmp}/bad.yaml"],
         ("bad.yaml", "empty config")),
    Case("eval-config-dup", _config("evaluation:\n  seed: 1\n  seed: 2\n"),
         [*EVAL, "--config", "{tmp}/bad.yaml"],
         ("bad.yaml", "duplicate key 'seed'")),
    Case("eval-weights-missing", None, [*EVAL[:-4], "--weights", "{tmp}/w.pth"], ("w.pth", "not found")),
    Case("eval-weights-hash", lambda e: torch.save({"state_dict": {}}, e.tmp / "resnet_10_23dataset.pth"),
         [*EVAL[:-4], "--weights", "{tmp}/resnet_10_23dataset.pth"], ("resnet_10_23dataset.pth", "SHA-256")),
    Case("eval-weights-text", _file("w.pth", "not weights"), [*EVAL[:-4], "--weights", "{tmp}/w.pth"],
         ("w.pth", "cannot read")),
    Case("stats-empty", _file("rs.npz", b""), EVAL_STATS, ("rs.npz", "empty file")),
    Case("stats-text", _file("rs.npz", "features,mu\n1,2\n"), EVAL_STATS, ("rs.npz", "not a real-feature")),
    Case("stats-foreign-npz", _stats("rs.npz", a=np.zeros(3)), EVAL_STATS, ("rs.npz", "fields", "missing")),
    Case("stats-npy", _npy("rs.npz"), EVAL_STATS, ("rs.npz", "not an .npz")),
    Case("stats-truncated", _truncated_stats, EVAL_STATS, ("rs.npz", "not a real-feature")),
    Case("stats-missing", None, EVAL_STATS, ("rs.npz", "file not found")),
    Case("stats-folder", _folder("rs.npz"), EVAL_STATS, ("rs.npz", "a folder")),
    Case("stats-bad-meta", _stats("rs.npz", features=np.zeros((3, 4)), mu=np.zeros(4), sigma=np.zeros((4, 4)),
                                  meta=np.array("[1]")), EVAL_STATS, ("rs.npz", "'meta'")),
    # -- real-stats and settings ----------------------------------------------------------------------
    Case("rstats-device-cuda", None, [*RSTATS, "--device", "cuda"], ("--device cuda", "no CUDA device"),
         needs_no_cuda=True),
    Case("rstats-real-missing", None, [RSTATS[0], "--real", "{tmp}/none", *RSTATS[3:]],
         ("none", "not a folder")),
    Case("rstats-out-is-config", _config("evaluation: {}\n"), [*RSTATS[:3], "--out", "{tmp}/bad.yaml",
                                                               *RSTATS[5:], "--config", "{tmp}/bad.yaml"],
         ("bad.yaml", "also reads or writes")),
    Case("settings-bad-json", None, [*SETTINGS, "{{seed: 1}}"], ("--json", "not valid JSON")),
    Case("settings-json-array", None, [*SETTINGS, "[1]"], ("--json", "JSON object")),
    Case("settings-kernel", None, [*SETTINGS, '{{"kernel_size": 1}}'], ("--json", "kernel_size")),
    Case("settings-out-folder", _folder("ev.yaml"), [*SETTINGS, "{{}}"], ("ev.yaml", "is a folder")),
    Case("settings-section", None, [*SETTINGS[:2], "training", *SETTINGS[3:], "{{}}"], ("--section",),
         code=2),
    # -- table, figure, curves --------------------------------------------------------------------------
    Case("table-metrics-missing", None, ["table", "--metrics", "{tmp}/none.json", "--out", "{tmp}/t.csv"],
         ("none.json", "not found")),
    Case("table-metrics-broken", _file("results/phantom-brain/16/wdm/metrics.json", "{bad"),
         ["table", "--metrics", "{tmp}/results/phantom-brain/16/wdm/metrics.json", "--out", "{tmp}/t.csv"],
         ("metrics.json", "not valid JSON")),
    Case("table-out-is-input", _file("results/phantom-brain/16/wdm/metrics.json", '{"fid": 1}'),
         ["table", "--metrics", "{tmp}/results/phantom-brain/16/wdm/metrics.json", "--out",
          "{tmp}/results/phantom-brain/16/wdm/metrics.json"], ("metrics.json", "also reads or writes")),
    Case("table-no-metrics", None, ["table", "--results", "{tmp}/none", "--out", "{tmp}/t.csv"],
         ("no metrics files",)),
    Case("figure-real-missing", None, ["figure", "--real", "{tmp}/none", "--out", "{tmp}/f.png"],
         ("none", "not a folder")),
    Case("figure-fake-pair", None, ["figure", "--real", "{data}/test", "--fake", "{data}/test", "--out",
                                    "{tmp}/f.png"], ("--fake", "NAME=VALUE")),
    Case("figure-fake-missing", None, ["figure", "--real", "{data}/test", "--fake", "m={tmp}/none", "--out",
                                       "{tmp}/f.png"], ("none", "not a folder")),
    Case("figure-n-0", None, ["figure", "--real", "{data}/test", "--n", "0", "--out", "{tmp}/f.png"],
         ("--n", ">= 1"), code=2),
    Case("figure-out-folder", _folder("f.png"), ["figure", "--real", "{data}/test", "--out", "{tmp}/f.png"],
         ("f.png", "is a folder")),
    Case("figure-bad-volume", lambda e: _truncate(e.data / "test" / "phantom-brain_0006.nii.gz"),
         ["figure", "--real", "{data}/test", "--out", "{tmp}/f.png"],
         ("phantom-brain_0006", "not a readable")),
    Case("curves-run-missing", None, ["curves", "loss", "--run", "wdm={tmp}/none", "--out", "{tmp}/l.png"],
         ("none", "--run wdm", "not found")),
    Case("curves-run-pair", None, ["curves", "loss", "--run", "{run}", "--out", "{tmp}/l.png"],
         ("--run", "NAME=VALUE")),
    Case("curves-loss-not-utf8", lambda e: (e.run / "loss.csv").write_bytes(b"step,loss\n\xff\n"),
         ["curves", "loss", "--run", "wdm={run}", "--out", "{tmp}/l.png"], ("loss.csv", "not UTF-8")),
    Case("curves-loss-columns", lambda e: (e.run / "loss.csv").write_text("a,b\n1,2\n"),
         ["curves", "loss", "--run", "wdm={run}", "--out", "{tmp}/l.png"], ("loss.csv", "'step'")),
    Case("curves-smoothing", None, ["curves", "loss", "--run", "wdm={run}", "--smoothing", "1.5", "--out",
                                    "{tmp}/l.png"], ("--smoothing", "[0, 1)"), code=2),
    Case("curves-steps-missing", None, ["curves", "fid-steps", "--metrics", "{tmp}/" + _STEPS, "--out",
                                        "{tmp}/s.png"], ("ddim_10/metrics.json", "not found")),
    Case("curves-steps-list", _file(_STEPS, "[1, 2]"),
         ["curves", "fid-steps", "--metrics", "{tmp}/" + _STEPS, "--out", "{tmp}/s.png"],
         ("metrics.json", "JSON list")),
    Case("curves-steps-path", _file("m/metrics.json", "{}"), ["curves", "fid-steps", "--metrics",
                                                              "{tmp}/m/metrics.json", "--out", "{tmp}/s.png"],
         ("m/metrics.json", "SAMPLER_STEPS")),
    Case("curves-steps-none", None, ["curves", "fid-steps", "--out", "{tmp}/s.png"], ("no sweep metrics",)),
    Case("curves-csv-is-input", _file(_STEPS, '{"fid": 1}'),
         ["curves", "fid-steps", "--metrics", "{tmp}/" + _STEPS, "--csv", "{tmp}/" + _STEPS, "--out",
          "{tmp}/s.png"],
         ("metrics.json", "also reads or writes")),
    # -- compare --------------------------------------------------------------------------------------
    Case("compare-table-foreign", _file("t.csv", "a,b\n1,2\n"), [*COMPARE, "--table", "{tmp}/t.csv"],
         ("t.csv", "missing columns", "dataset")),
    Case("compare-table-missing", None, [*COMPARE, "--table", "{tmp}/t.csv"], ("t.csv", "not found")),
    Case("compare-table-not-utf8", _file("t.csv", b"dataset,model\n\xff\n"),
         [*COMPARE, "--table", "{tmp}/t.csv"],
         ("t.csv", "not UTF-8")),
    Case("compare-table-empty", _file("t.csv", ""), [*COMPARE, "--table", "{tmp}/t.csv"],
         ("t.csv", "empty file")),
    Case("compare-table-resolution", _file("t.csv", "dataset,resolution,model\nphantom,big,wdm\n"),
         [*COMPARE, "--table", "{tmp}/t.csv"], ("t.csv", "'resolution'", "expected a number")),
    Case("compare-reference-foreign", _all(_file("t.csv", _TABLE), _file("ref.csv", "x,y\n1,2\n")),
         [*COMPARE, "--table", "{tmp}/t.csv", "--reference", "{tmp}/ref.csv"],
         ("ref.csv", "missing columns")),
    Case("compare-reference-value", _all(_file("t.csv", _TABLE), _file(
        "ref.csv", _REF_HEADER + "brats,128,wdm,WDM,fid,abc,1000,,paper,false,\n")),
         [*COMPARE, "--table", "{tmp}/t.csv", "--reference", "{tmp}/ref.csv"],
         ("ref.csv", "'value'", "'abc'")),
    Case("compare-out-is-table", _file("t.csv", _TABLE), ["compare", "--table", "{tmp}/t.csv", "--out",
                                                          "{tmp}/t.csv"], ("t.csv", "also reads or writes")),
    Case("compare-paper-dataset", _file("t.csv", _TABLE),
         [*COMPARE, "--table", "{tmp}/t.csv", "--paper-dataset", "phantom"],
         ("--paper-dataset", "NAME=VALUE")),
    # -- memory-figure ----------------------------------------------------------------------------------
    Case("mem-profile-broken", _file("p.json", "{"), [*MEMFIG, "{tmp}/p.json"], ("p.json", "not valid JSON")),
    Case("mem-profile-list", _file("p.json", "[1]"), [*MEMFIG, "{tmp}/p.json"], ("p.json", "JSON list")),
    Case("mem-profile-foreign", _file("p.json", '{"fid": 1.0}'), [*MEMFIG, "{tmp}/p.json"],
         ("p.json", "'model'")),
    Case("mem-profile-mode", _file("p.json", _PROFILE.replace('"train"', '"fit"')), [*MEMFIG, "{tmp}/p.json"],
         ("p.json", "'mode'", "'fit'")),
    Case("mem-profile-resolution", _file("p.json", _PROFILE.replace("16", '"16"')), [*MEMFIG, "{tmp}/p.json"],
         ("p.json", "'resolution'")),
    Case("mem-profile-empty", _file("p.json", ""), [*MEMFIG, "{tmp}/p.json"], ("p.json", "empty file")),
    Case("mem-profile-missing", None, [*MEMFIG, "{tmp}/p.json"], ("p.json", "not found")),
    Case("mem-csv-is-profile", _file("p.json", _PROFILE), ["memory-figure", "--csv", "{tmp}/p.json", "--out",
                                                           "{tmp}/m.png", "--profiles", "{tmp}/p.json"],
         ("p.json", "--csv", "also reads or writes")),
    Case("mem-csv-is-out", _file("p.json", _PROFILE), ["memory-figure", "--csv", "{tmp}/m.png", "--out",
                                                       "{tmp}/m.png", "--profiles", "{tmp}/p.json"],
         ("m.png", "also reads or writes")),
    # -- prepare ----------------------------------------------------------------------------------------
    Case("prep-out-cwd", None, [*PREP, "--out", ".", "--overwrite"], ("--out", "working directory")),
    Case("prep-out-parent", None, [*PREP, "--out", "..", "--overwrite"], ("--out", "working directory")),
    Case("prep-overwrite-foreign", _folder("mine", "thesis.tex"),
         [*PREP, "--out", "{tmp}/mine", "--overwrite"],
         ("mine", "--overwrite", "thesis.tex")),
    Case("prep-out-not-empty", _folder("mine", "thesis.tex"), [*PREP, "--out", "{tmp}/mine"],
         ("mine", "not empty")),
    Case("prep-out-file", None, [*PREP, "--out", "{cfg}"], ("tiny.yaml", "not a folder")),
    Case("prep-size", None, [*PREP, "--size", "17", "--out", "{tmp}/d"], ("size", "17")),
    Case("prep-size-0", None, [*PREP, "--size", "0", "--out", "{tmp}/d"], ("--size", ">= 1"), code=2),
    Case("prep-seed", None, [*PREP, "--seed", "-1", "--out", "{tmp}/d"], ("--seed", ">= 0"), code=2),
    Case("prep-dataset", None, ["prepare", "--dataset", "brats-x", "--out", "{tmp}/d"],
         ("unknown data set",)),
    Case("prep-phantom-source", _folder("src"), [*PREP, "--source", "{tmp}/src", "--out", "{tmp}/d"],
         ("phantom-brain takes no source",)),
    Case("prep-phantom-modality", None, [*PREP, "--modality", "t1c", "--out", "{tmp}/d"], ("modality",)),
    Case("brats-no-source", None, [*BRATS, "--out", "{tmp}/d"], ("brats", "source")),
    Case("brats-source-missing", None, [*BRATS, "--source", "{tmp}/none", "--out", "{tmp}/d"],
         ("none", "not found")),
    Case("brats-source-empty", _folder("brats"), [*BRATS, "--source", "{tmp}/brats", "--out", "{tmp}/d"],
         ("brats", "no BraTS case folders")),
    Case("brats-strict-bad-case", _all(_brats_case("BraTS-GLI-00001-000"),
                                       _brats_case("BraTS-GLI-00002-000")),
         [*BRATS, "--source", "{tmp}/brats", "--out", "{tmp}/d", "--strict"],
         ("BraTS-GLI-0000", "-t1n.nii.gz", "not a readable NIfTI", "strict")),
    Case("brats-out-in-source", _brats_case("BraTS-GLI-00001-000"),
         [*BRATS, "--source", "{tmp}/brats", "--out", "{tmp}/brats/prepared"], ("--source", "overlap")),
    Case("lidc-source-empty", _folder("lidc"), [*LIDC, "--source", "{tmp}/lidc", "--out", "{tmp}/d"],
         ("lidc", "no LIDC-IDRI cases")),
    Case("lidc-strict-garbage-dicom", _all(_dicom_case("LIDC-IDRI-0001"), _dicom_case("LIDC-IDRI-0002")),
         [*LIDC, "--source", "{tmp}/lidc", "--out", "{tmp}/d", "--strict"],
         ("LIDC-IDRI-000", ".dcm", "not a readable DICOM file")),
    Case("lidc-modality", _dicom_case("LIDC-IDRI-0001"),
         [*LIDC, "--source", "{tmp}/lidc", "--out", "{tmp}/d", "--modality", "t1n"],
         ("modality applies to brats",)),
    # -- convert-checkpoint and profile -----------------------------------------------------------------
    Case("convert-src-missing", None, [*CONVERT, "--src", "{tmp}/w.pt"], ("w.pt", "--src", "not found")),
    Case("convert-src-folder", _folder("w.pt"), [*CONVERT, "--src", "{tmp}/w.pt"], ("w.pt", "is a folder")),
    Case("convert-src-text", _file("w.pt", "not a checkpoint"), [*CONVERT, "--src", "{tmp}/w.pt"],
         ("w.pt", "not a readable")),
    Case("profile-resolution-0", None, [*PROFILE, "--resolution", "0"], ("--resolution", ">= 1")),
    Case("profile-batch-0", None, [*PROFILE, "--resolution", "16", "--batch-size", "0"],
         ("--batch-size", ">= 1")),
    Case("profile-device-cuda", None, [*PROFILE, "--resolution", "16", "--device", "cuda"],
         ("--device cuda", "no CUDA device"), needs_no_cuda=True),
    Case("profile-out-is-config", None, [*PROFILE[:5], "--out", "{cfg}", "--resolution", "16"],
         ("tiny.yaml", "also reads or writes")),
    Case("profile-config-missing", None, [PROFILE[0], "--config", "{tmp}/none.yaml", *PROFILE[3:],
                                          "--resolution", "16"], ("none.yaml", "not found")),
]


# ------------------------------------------------------------------------------ the test
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
