"""The evaluation sub-commands of ``wdm-bench``: evaluate, real-stats, pairwise, fid-vs-n.

Thin like :mod:`wdm.cli`: parse, check the outputs, call :mod:`eval`. Every evaluation setting
comes from ``--config``'s ``evaluation`` section (the schema's defaults without it), then the flags
given, validated by the same schema (:meth:`wdm.config.EvaluationSettings.with_overrides`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from wdm.cli_checks import Command, at_least, n_fake, named_values, set_threads

if TYPE_CHECKING:
    from wdm.config import EvaluationSettings

__all__ = ["METRIC_COMMANDS"]

log = logging.getLogger("wdm")

#: evaluation settings that command-line flags may override (argparse dest = settings field).
_OVERRIDES = ("weights", "depth", "protocol", "n_real", "seed", "batch_size", "kernel_size",
              "max_pairs", "n_bootstrap", "ci_level", "allow_small_n", "fallback_weights")


def _settings(a: argparse.Namespace) -> EvaluationSettings:
    """``--config``'s evaluation section (absent: the schema's defaults), then the flags given."""
    from wdm.config import load_evaluation_settings

    return load_evaluation_settings(a.config).with_overrides(
        **{field: getattr(a, field, None) for field in _OVERRIDES})


def _extractor_inputs(a: argparse.Namespace) -> tuple[str | None, ...]:
    """The files evaluate / real-stats read besides the volumes (``--out`` may be none of them)."""
    weights = a.weights if a.weights and Path(a.weights).is_file() else None
    return (a.config, getattr(a, "real_stats", None), getattr(a, "test_features", None), weights,
            a.fallback_weights)


def _check_outputs(a: argparse.Namespace) -> None:
    from wdm.cli_checks import check_not_a_volume_of
    from wdm.io import InputError, check_output

    outs = {"--out": a.out, "--features-out": a.features_out, "--memorisation-out": a.memorisation_out,
            "--nearest-figure": a.nearest_figure}
    given = [p for p in outs.values() if p]
    if len({str(Path(p).resolve()) for p in given}) < len(given):
        raise InputError(f"two outputs name the same file: {given}")
    for flag, path in outs.items():
        if path:
            check_output(path, flag=flag, inputs=_extractor_inputs(a))
            check_not_a_volume_of(path, (a.real, a.fake))
    if (a.memorisation_out or a.nearest_figure) and not a.test_features:
        raise InputError("--memorisation-out / --nearest-figure need --test-features (the held-out "
                         "set's features, e.g. the reference row's features.npz)")


def _cmd_evaluate(a: argparse.Namespace) -> None:
    from eval.evaluate import evaluate, load_checked, write_metrics
    from eval.memorise import write_memorisation_csv, write_nearest_figure
    from wdm.cli_checks import check_device
    from wdm.io import InputError

    set_threads(a.threads)
    if a.real is None and a.real_stats is None:
        raise InputError("give --real DIR or --real-stats FILE")
    _check_outputs(a)
    a.device = check_device(a.device)
    settings = _settings(a)
    n = {"all": None, "config": settings.n_samples}.get(a.n_fake, a.n_fake)
    result = evaluate(a.real, a.fake, settings, n_fake=n, real_stats=a.real_stats, device=a.device,
                      test_features=a.test_features, features_out=a.features_out)
    if result["status"] == "oom" and a.features_out:  # a row without numbers: pairwise leaves it out
        from eval.feature_cache import save_oom_marker

        save_oom_marker(a.features_out, result["error"])
    if a.memorisation_out:
        write_memorisation_csv(a.memorisation_out, result)
    if a.nearest_figure:
        model = Path(a.out).parent.name
        title = (f"{model}: suspected copies" if result["status"] == "ok" else
                 f"{model}: not evaluated ({result['status']}: {result.get('error')})")
        write_nearest_figure(a.nearest_figure, result, load=lambda p: load_checked(p, None), title=title)
    write_metrics(a.out, result, settings)


def _cmd_real_stats(a: argparse.Namespace) -> None:
    from eval.evaluate import real_statistics, save_real_stats
    from wdm.cli_checks import check_device, check_not_a_volume_of
    from wdm.io import check_output

    set_threads(a.threads)
    check_output(a.out, inputs=_extractor_inputs(a))
    check_not_a_volume_of(a.out, (a.real,))
    a.device = check_device(a.device)
    stats = real_statistics(a.real, _settings(a), device=a.device)
    save_real_stats(a.out, stats)
    log.info("wrote %s (%d real volumes, %d features)", a.out, *stats["features"].shape)


def _cmd_pairwise(a: argparse.Namespace) -> None:
    from eval.pairwise import pairwise_table, write_pairwise
    from wdm.io import check_output

    set_threads(a.threads)
    real, sets = named_values(a.real, "--real"), named_values(a.set, "--set")
    check_output(a.out, inputs=(a.config, *real.values(), *sets.values()))
    df = pairwise_table(real, sets, _settings(a), progress=not a.no_progress)
    write_pairwise(df, a.out)
    log.info("wrote %s (%d rows, %d significant at p < 0.05)", a.out, len(df),
             int(df["significant"].sum()))


def _cmd_fid_vs_n(a: argparse.Namespace) -> None:
    from eval.figures_fidelity import fid_vs_n_figure
    from eval.memorise import protocol_line
    from wdm.io import InputError, check_output, read_json

    check_output(a.out, inputs=tuple(a.metrics))
    curves, first = [], None
    for f in a.metrics:
        m = read_json(f, "metrics file")
        if m.get("fid_inf_ns") is None:
            log.warning("%s: no FID-infinity curve (status %s): left out", f, m.get("status"))
            continue
        first = first or m
        curves.append({"model": Path(f).parent.name, "ns": m["fid_inf_ns"], "fids": m["fid_inf_fids"],
                       "fid_inf": m["fid_inf"], "slope": m["fid_inf_slope"]})
    if first is None:
        raise InputError(f"none of {len(a.metrics)} metrics files has an FID-infinity curve")
    cell = Path(a.metrics[0]).parent.parent
    fid_vs_n_figure(curves, a.out, title=f"FID against 1/N: {cell.parent.name}, {cell.name}³",
                    protocol_note=protocol_line(first))
    log.info("wrote %s (%d curves)", a.out, len(curves))


# ------------------------------------------------------------------ arguments
def _args_extractor(s: argparse.ArgumentParser) -> None:
    """``--config`` and the feature-extractor overrides shared by evaluate and real-stats.

    Every override defaults to None (= the settings file's value, else the schema's default) and
    is validated by the schema, like the file, through ``EvaluationSettings.with_overrides``.
    """
    s.add_argument("--config", default=None,
                   help="workflow config or evaluation settings file (its evaluation section; "
                        "default: the schema's defaults); the flags below override it")
    s.add_argument("--weights", default=None,
                   help="MedicalNet weights: path, name, hub:NAME, auto:NAME, none")
    s.add_argument("--fallback-weights", default=None, metavar="PATH",
                   help="phantom-seg checkpoint (train-extractor) that auto:NAME uses when the "
                        "MedicalNet file is missing and evaluation.fallback is phantom-seg")
    s.add_argument("--depth", type=int, default=None, help="ResNet depth of the feature extractor")
    s.add_argument("--protocol", default=None, help="evaluation protocol: wdm or hagan")
    s.add_argument("--n-real", type=int, default=None, help="use the first N real volumes")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--batch-size", type=int, default=None, help="feature extraction batch size")
    s.add_argument("--device", default="cpu", help="torch device for feature extraction (cpu, cuda, "
                   "cuda:N, auto)")
    s.add_argument("--threads", type=at_least(1), default=None)


def _args_evaluate(s: argparse.ArgumentParser) -> None:
    s.add_argument("--real", default=None, help="folder of real volumes (NIfTI, [0, 1])")
    s.add_argument("--real-stats", default=None,
                   help="real-feature file from 'real-stats' (replaces reading --real)")
    s.add_argument("--fake", required=True, help="folder of generated volumes")
    s.add_argument("--out", required=True, help="metrics JSON file")
    _args_extractor(s)
    s.add_argument("--n-fake", type=n_fake, default="all", metavar="{N,all,config}",
                   help="require and use the first N fakes; all: every volume in --fake "
                        "(default); config: evaluation.n_samples of the settings")
    s.add_argument("--kernel-size", type=int, default=None, help="MS-SSIM Gaussian window")
    s.add_argument("--max-pairs", type=int, default=None,
                   help="MS-SSIM on a random subset of this many pairs (default: all)")
    s.add_argument("--n-bootstrap", type=int, default=None, help="bootstrap resamples (0: no CI)")
    s.add_argument("--ci-level", type=float, default=None,
                   help="level of the bootstrap intervals, in (0, 1)")
    s.add_argument("--allow-small-n", action="store_const", const=True, default=None,
                   help="report a protocol number on fewer volumes than the protocol names, marked "
                        "'n below protocol' (evaluation.allow_small_n)")
    s.add_argument("--test-features", default=None,
                   help="held-out test set's feature file (memorisation check against training)")
    s.add_argument("--features-out", default=None, help="write the generated set's features (.npz)")
    s.add_argument("--memorisation-out", default=None, help="suspected copies (CSV)")
    s.add_argument("--nearest-figure", default=None,
                   help="suspects beside their nearest training volumes (PNG)")


def _args_real_stats(s: argparse.ArgumentParser) -> None:
    s.add_argument("--real", required=True, help="folder of real volumes (NIfTI, [0, 1])")
    s.add_argument("--out", required=True, help="output .npz file")
    _args_extractor(s)


def _args_pairwise(s: argparse.ArgumentParser) -> None:
    s.add_argument("--real", nargs="+", required=True, metavar="DATASET/RES=FILE",
                   help="each cell's real feature file (real-stats)")
    s.add_argument("--set", nargs="+", required=True, metavar="DATASET/RES/MODEL=FILE",
                   help="each evaluated set's feature file (evaluate --features-out)")
    s.add_argument("--out", required=True, help="output CSV")
    s.add_argument("--config", default=None, help="evaluation settings file")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--threads", type=at_least(1), default=None)
    s.add_argument("--no-progress", action="store_true")


def _args_fid_vs_n(s: argparse.ArgumentParser) -> None:
    s.add_argument("--metrics", nargs="+", required=True,
                   help="metrics.json of each model of one (data set, resolution)")
    s.add_argument("--out", required=True, help="output PNG")


METRIC_COMMANDS: tuple[Command, ...] = (
    Command("evaluate", "FID, KID, FID-inf, PRDC, MS-SSIM and memorisation of generated volumes",
            _args_evaluate, _cmd_evaluate),
    Command("real-stats", "extract and cache the real volumes' features", _args_real_stats,
            _cmd_real_stats),
    Command("pairwise", "paired bootstrap of FID / KID differences between every two models",
            _args_pairwise, _cmd_pairwise),
    Command("fid-vs-n", "figure of FID against 1/N with the FID-infinity fit", _args_fid_vs_n,
            _cmd_fid_vs_n),
)
