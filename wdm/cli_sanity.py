"""``wdm-bench sanity``: prove that each metric responds to real defects of 3D generators.

Thin like :mod:`wdm.cli`: reads a prepared data folder's test and train splits, builds every
feature extractor through the evaluation's own code path (:func:`eval.evaluate._make_extractor`,
so every weights spec evaluation knows works here), runs the pure core :func:`eval.sanity.run_sanity`
and writes ``<out>/sanity.csv`` and the figure (:func:`eval.figures_sanity.sanity_figure`), both
atomically. Settings: ``--settings``' evaluation section (the schema's defaults without it), then the
flags given, validated by the same schema.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wdm.cli_checks import Command, at_least, set_threads

if TYPE_CHECKING:
    import numpy as np

    from eval.sanity import FrdBackend
    from wdm.config import EvaluationSettings

__all__ = ["SANITY_COMMAND"]

log = logging.getLogger("wdm")

#: the CSV's file name inside ``--out``.
CSV_NAME = "sanity.csv"


def _settings(a: argparse.Namespace) -> EvaluationSettings:
    from wdm.config import load_evaluation_settings

    return load_evaluation_settings(a.settings).with_overrides(
        seed=a.seed, depth=a.depth, protocol=a.protocol, n_bootstrap=a.n_bootstrap, frd=a.frd)


def _split(data: Path, split: str) -> np.ndarray:
    """The volumes (N, D, H, W) float64 of one split of a prepared data folder (checked)."""
    import numpy as np

    from eval.evaluate import load_checked
    from wdm.data.prepare import split_files
    from wdm.io import InputError

    if not data.is_dir():
        raise InputError(f"{data}: --data is not a folder, expected a prepared data folder "
                         "(wdm-bench prepare)")
    files = split_files(data, split)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"{missing[0]}: listed in {data / 'manifest.csv'} but missing "
                         f"({len(missing)} missing in split {split!r}); re-run 'wdm-bench prepare'")
    first = load_checked(files[0], None)
    return np.stack([first] + [load_checked(f, first.shape) for f in files[1:]]).astype(np.float64)


def _extractors(specs: list[str], settings: EvaluationSettings, batch_size: int,
                device: str) -> tuple[dict[str, Any], dict[str, str]]:
    """name -> feature function (K, D, H, W) -> (K, F), and name -> the extractor's label."""
    from eval.evaluate import _make_extractor
    from wdm.io import InputError

    if len(set(specs)) < len(specs):
        raise InputError(f"--extractor names a spec twice: {specs}")
    fns, labels = {}, {}
    for spec in specs:
        ext = _make_extractor(settings.with_overrides(weights=spec))
        fns[spec] = lambda vols, ext=ext: ext.features(list(vols), batch_size, device)
        labels[spec] = ext.label
    return fns, labels


def _frd(settings: EvaluationSettings) -> tuple[FrdBackend | None, str | None]:
    """FRD's backend (evaluate's: radiomics on the grid as 1 mm voxels) or the reason it is off;
    an InputError when ``evaluation.frd`` is ``required`` and the backend is missing."""
    from eval.evaluate import _frd_backend, _radiomics
    from eval.frd import frd_available, frd_from_features
    from eval.sanity import FrdBackend

    if _frd_backend(settings) is None:
        off = settings.frd == "off"
        return None, "FRD off (evaluation.frd)" if off else f"FRD not computed: {frd_available()[1]}"
    return FrdBackend(_radiomics, lambda r, f: frd_from_features(r, f)["frd"]), None


def _write_csv(rows: list[dict[str, Any]], labels: dict[str, str], out: Path) -> None:
    import pandas as pd

    from eval.sanity import COLUMNS, RADIOMICS, VOXELS
    from wdm.io import atomic_path

    names = {**labels, VOXELS: "voxel space", RADIOMICS: "radiomics (FRD)"}
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df["extractor_label"] = df["extractor"].map(names)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """BLAS pinned to one thread (``threadpoolctl``, when installed): the metrics are many small
    matrix products, which multi-threaded OpenBLAS slows down by 10-50x on a busy machine; torch's
    own threads (feature extraction, MS-SSIM) are not affected."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _cmd_sanity(a: argparse.Namespace) -> None:
    from eval.corruptions import get_corruption
    from eval.figures_sanity import sanity_figure
    from eval.sanity import run_sanity
    from wdm.cli_checks import check_device
    from wdm.io import check_output

    start = time.perf_counter()
    set_threads(a.threads)
    out_csv = Path(a.out) / CSV_NAME
    figure = Path(a.figure) if a.figure else Path(a.out) / "sanity.png"
    check_output(out_csv, "--out", inputs=(a.settings, figure))
    check_output(figure, "--figure", inputs=(a.settings,))
    for name in a.corruptions or ():
        get_corruption(name)  # before any volume is read
    settings = _settings(a)
    device = check_device(a.device) or "cpu"
    test, train = _split(Path(a.data), "test"), _split(Path(a.data), "train")
    fns, labels = _extractors(a.extractor or [settings.weights or "none"], settings, a.batch_size,
                              device)
    frd, note = _frd(settings)
    with _one_blas_thread():
        rows = run_sanity(test, train, fns, settings, corruptions=a.corruptions,
                          n_strengths=a.strengths, max_pairs=a.max_pairs, frd=frd, frd_note=note,
                          progress=not a.no_progress)
    _write_csv(rows, labels, out_csv)
    title = f"Metric sanity: {Path(a.data).parent.name} {Path(a.data).name}"
    sanity_figure(rows, figure, title=title, labels=labels, note=note)
    log.info("wrote %s (%d rows) and %s in %.1f s", out_csv, len(rows), figure,
             time.perf_counter() - start)


def _args_sanity(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data", required=True, help="prepared data folder (train/, test/, manifest.csv)")
    s.add_argument("--out", required=True, help="output folder for sanity.csv")
    s.add_argument("--figure", default=None, help="output PNG (default OUT/sanity.png)")
    s.add_argument("--settings", default=None,
                   help="evaluation settings file (its evaluation section; default: the schema's)")
    s.add_argument("--extractor", action="append", default=None, metavar="SPEC",
                   help="feature extractor weights spec, repeatable (path, name, hub:NAME, "
                        "auto:NAME, none, ...); default: the settings' weights")
    s.add_argument("--depth", type=int, default=None, help="ResNet depth of the extractors")
    s.add_argument("--protocol", default=None, help="evaluation protocol: wdm or hagan")
    s.add_argument("--corruptions", nargs="+", default=None, metavar="NAME",
                   help="corruptions to run (default: every registered one)")
    s.add_argument("--strengths", type=at_least(1), default=None,
                   help="strengths per corruption besides 0 (default: each corruption's own, 4)")
    s.add_argument("--seed", type=int, default=None, help="default: the settings' seed")
    s.add_argument("--n-bootstrap", type=int, default=None,
                   help="resamples of the real-vs-real interval (default: the settings')")
    s.add_argument("--max-pairs", type=at_least(1), default=30,
                   help="MS-SSIM on this many random pairs per set")
    s.add_argument("--frd", default=None, choices=["off", "auto", "required"],
                   help="FRD on the clean and strongest sets (default: the settings')")
    s.add_argument("--batch-size", type=at_least(1), default=16, help="feature extraction batch")
    s.add_argument("--device", default="cpu", help="torch device for feature extraction")
    s.add_argument("--threads", type=at_least(1), default=None)
    s.add_argument("--no-progress", action="store_true")


SANITY_COMMAND = Command("sanity", "metric sanity suite: every metric under controlled defects of "
                         "the test split (CSV + figure)", _args_sanity, _cmd_sanity)
