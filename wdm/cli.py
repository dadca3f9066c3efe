"""``wdm-bench``: the command line of the suite. Thin: parses arguments, calls the package.

Sub-commands: prepare, train, sample, real-stats, evaluate, table, figure, curves, compare,
convert-checkpoint, profile, memory-figure. Exit code 0 on success; on any error one line
``wdm-bench <command>: error: <reason>`` on stderr and exit code 1 (2 for bad usage).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]

log = logging.getLogger("wdm")


def _cmd_prepare(a: argparse.Namespace) -> None:
    from wdm.data.prepare import prepare

    prepare(a.dataset, a.out, source=a.source, size=a.size, seed=a.seed, n_train=a.n_train,
            n_test=a.n_test, overwrite=a.overwrite, modality=a.modality, strict=a.strict,
            threads=a.threads, progress=not a.no_progress)


def _cmd_train(a: argparse.Namespace) -> None:
    from wdm.train import train

    # under torchrun the job's threads are shared by the processes on this machine
    procs = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    _set_threads(max(1, a.threads // procs) if a.threads else None)
    prof = train(a.config, a.data, a.out, resume=a.resume, progress=not a.no_progress)
    if prof.get("status") == "oom":  # recorded in train_profile.json; the workflow goes on
        print(f"wdm-bench train: out of memory (recorded as OOM in {Path(a.out) / 'train_profile.json'}): "
              f"{prof['error']}", file=sys.stderr)
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            sys.exit(3)  # torchrun then stops the other ranks, which may wait in a collective


def _cmd_sample(a: argparse.Namespace) -> None:
    from wdm.sample import sample

    _set_threads(a.threads)
    sample(a.run, a.n, a.seed, a.out, sampler=a.sampler, steps=a.steps, batch_size=a.batch_size,
           device=a.device, progress=not a.no_progress)


def _eval_config(a: argparse.Namespace) -> dict:
    """The evaluation config: schema defaults or ``--config``'s section, then command-line overrides."""
    from wdm.config import validate

    ecfg = validate({"datasets": {"_": {}}}, source="defaults")["evaluation"]
    if a.config:
        from wdm.config import load_workflow_config

        ecfg = load_workflow_config(a.config)["evaluation"]
    overrides = {"weights": a.weights, "depth": a.depth, "protocol": a.protocol, "seed": a.seed,
                 "batch_size": a.batch_size, "n_real": a.n_real}
    for key in ("n_fake", "kernel_size", "max_pairs", "n_bootstrap"):
        if hasattr(a, key):
            overrides["n_samples" if key == "n_fake" else key] = getattr(a, key)
    ecfg.update({k: v for k, v in overrides.items() if v is not None})
    return ecfg


def _cmd_evaluate(a: argparse.Namespace) -> None:
    from eval.evaluate import evaluate, write_metrics

    _set_threads(a.threads)
    if a.real is None and a.real_stats is None:
        raise ValueError("give --real DIR or --real-stats FILE")
    ecfg = _eval_config(a)
    result = evaluate(a.real, a.fake, weights=ecfg["weights"], depth=ecfg["depth"],
                      protocol=ecfg["protocol"], batch_size=ecfg["batch_size"], seed=ecfg["seed"],
                      kernel_size=ecfg["kernel_size"], n_fake=ecfg["n_samples"] if a.n_fake else None,
                      n_real=ecfg.get("n_real"), max_pairs=ecfg.get("max_pairs"),
                      n_bootstrap=ecfg.get("n_bootstrap", 200), ci_level=ecfg.get("ci_level", 0.95),
                      real_stats=a.real_stats, device=a.device)
    write_metrics(a.out, result, ecfg)


def _cmd_real_stats(a: argparse.Namespace) -> None:
    from eval.evaluate import real_statistics, save_real_stats

    _set_threads(a.threads)
    ecfg = _eval_config(a)
    stats = real_statistics(a.real, weights=ecfg["weights"], depth=ecfg["depth"],
                            protocol=ecfg["protocol"], batch_size=ecfg["batch_size"],
                            seed=ecfg["seed"], n_real=ecfg.get("n_real"), device=a.device)
    save_real_stats(a.out, stats)
    log.info("wrote %s (%d real volumes, %d features)", a.out, *stats["features"].shape)


def _cmd_table(a: argparse.Namespace) -> None:
    from eval.tables import build_table, write_table

    files = list(a.metrics) if a.metrics else sorted(Path(a.results).glob("*/*/*/metrics.json"))
    df = build_table(files)
    write_table(df, a.out)
    n_oom = int((df["status"] == "oom").sum())
    log.info("wrote %s (%d rows%s)", a.out, len(df), f", {n_oom} out of memory" if n_oom else "")


def _cmd_figure(a: argparse.Namespace) -> None:
    from eval.figures import sample_grid

    sources: dict[str, str] = {"real": a.real}
    for item in a.fake:
        name, sep, folder = item.partition("=")
        if not sep:
            raise ValueError(f"--fake expects MODEL=DIR, got {item!r}")
        sources[name] = folder
    sample_grid(sources, a.out, n=a.n, title=a.title)


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    """``NAME=VALUE`` arguments as a dict (a ValueError names the flag on a malformed item)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{flag} expects NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def _cmd_curves(a: argparse.Namespace) -> None:
    from eval import figures_curves as fc

    if a.kind == "loss":
        fc.loss_figure(_pairs(a.run, "--run"), a.out, smoothing=a.smoothing, title=a.title)
        return
    df = fc.collect_fid_vs_steps(a.metrics)
    if a.csv:
        from wdm.io import atomic_path

        with atomic_path(a.csv) as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
    fc.fid_vs_steps_figure(df, a.out, title=a.title)


def _cmd_compare(a: argparse.Namespace) -> None:
    import pandas as pd

    from eval.compare import compare_to_paper, load_reference
    from wdm.io import atomic_path

    table = pd.read_csv(a.table, dtype={"dataset": str, "model": str})
    df = compare_to_paper(table, load_reference(a.reference), _pairs(a.paper_dataset, "--paper-dataset"))
    with atomic_path(a.out) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    log.info("wrote %s (%d rows)", a.out, len(df))


def _cmd_convert_checkpoint(a: argparse.Namespace) -> None:
    from wdm.convert import write_converted_run

    affine = None
    if a.data:  # the affine (and side) of a prepared data folder's training volumes
        from wdm.data.prepare import split_files
        from wdm.io import load_nifti

        vol, affine = load_nifti(split_files(Path(a.data), "train")[0])
        a.size = int(vol.shape[0])
    write_converted_run(a.src, a.out, a.config, size=a.size, affine=affine, step=a.step,
                        overwrite=a.overwrite)



def _cmd_profile(a: argparse.Namespace) -> None:
    from eval.probe import run_cli

    run_cli(a)  # an isolated child process; writes --out; raises only for a non-memory failure


def _cmd_memory_figure(a: argparse.Namespace) -> None:
    from eval.figures_memory import load_profiles, memory_figure, profile_rows, write_memory_csv

    rows = profile_rows(load_profiles(a.profiles))
    write_memory_csv(rows, a.csv)
    memory_figure(rows, a.out, memory_limit_gb=a.memory_limit_gb)

def _set_threads(n: int | None) -> None:
    """torch CPU threads: ``n`` capped at the machine's cores (more only oversubscribes them)."""
    if n:
        import torch

        torch.set_num_threads(max(1, min(n, os.cpu_count() or n)))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    p = argparse.ArgumentParser(prog="wdm-bench", description=__doc__.split("\n")[0])
    p.add_argument("--log-level", default=os.environ.get("WDM_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("prepare", help="build or preprocess a data set into a data folder")
    s.add_argument("--dataset", required=True, help="data set name, e.g. phantom-brain")
    s.add_argument("--out", required=True, help="output data folder")
    s.add_argument("--source", default=None, help="folder of the raw data (real data sets)")
    s.add_argument("--size", type=int, default=32, help="cube side of the output volumes")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--n-train", type=int, default=None,
                   help="phantom-brain: volumes (default 40); brats/lidc: cap on training cases "
                        "(default: every case not in the test set)")
    s.add_argument("--n-test", type=int, default=20, help="volumes / cases held out for testing")
    s.add_argument("--modality", default=None, choices=["t1n", "t1c", "t2w", "t2f"],
                   help="BraTS scan (default t1n, as in the paper)")
    s.add_argument("--strict", action="store_true",
                   help="turn every excluded case (excluded.csv) into an error")
    s.add_argument("--threads", type=int, default=1, help="cases processed in parallel")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    s.set_defaults(func=_cmd_prepare)

    s = sub.add_parser("train", help="train a model from a data folder into a run folder")
    s.add_argument("--config", required=True, help="run config YAML (config/models/*.yaml)")
    s.add_argument("--data", required=True, help="prepared data folder")
    s.add_argument("--out", required=True, help="run folder (checkpoints, loss log, profile)")
    s.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("sample", help="sample N volumes from a trained run")
    s.add_argument("--run", required=True, help="run folder written by train")
    s.add_argument("--n", type=int, required=True, help="number of volumes")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True, help="output folder for sample_*.nii.gz")
    s.add_argument("--sampler", choices=["ddpm", "ddim"], default=None)
    s.add_argument("--steps", type=int, default=None, help="sampling steps")
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_sample)

    def extractor_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("--config", default=None, help="workflow config (its evaluation section)")
        s.add_argument("--weights", default=None,
                       help="MedicalNet weights: path, name, hub:NAME, auto:NAME, none")
        s.add_argument("--depth", type=int, default=None, choices=[10, 18, 34, 50])
        s.add_argument("--protocol", choices=["wdm", "hagan"], default=None)
        s.add_argument("--n-real", type=int, default=None, help="use the first N real volumes")
        s.add_argument("--seed", type=int, default=None)
        s.add_argument("--batch-size", type=int, default=None, help="feature extraction batch size")
        s.add_argument("--device", default="cpu", help="torch device for feature extraction")
        s.add_argument("--threads", type=int, default=None)

    s = sub.add_parser("evaluate", help="FID, MMD and MS-SSIM diversity of generated volumes")
    s.add_argument("--real", default=None, help="folder of real volumes (NIfTI, [0, 1])")
    s.add_argument("--real-stats", default=None,
                   help="real-feature file from 'real-stats' (replaces reading --real)")
    s.add_argument("--fake", required=True, help="folder of generated volumes")
    s.add_argument("--out", required=True, help="metrics JSON file")
    extractor_args(s)
    s.add_argument("--n-fake", type=int, default=None, help="require and use this many fakes")
    s.add_argument("--kernel-size", type=int, default=None, help="MS-SSIM Gaussian window (7)")
    s.add_argument("--max-pairs", type=int, default=None,
                   help="MS-SSIM on a random subset of this many pairs (default: all)")
    s.add_argument("--n-bootstrap", type=int, default=None, help="bootstrap resamples (0: no CI)")
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("real-stats", help="extract and cache the real volumes' features")
    s.add_argument("--real", required=True, help="folder of real volumes (NIfTI, [0, 1])")
    s.add_argument("--out", required=True, help="output .npz file")
    extractor_args(s)
    s.set_defaults(func=_cmd_real_stats)

    s = sub.add_parser("table", help="collect metrics into the comparison table")
    s.add_argument("--metrics", nargs="*", help="metrics.json files (default: all under --results)")
    s.add_argument("--results", default="results", help="results folder to search")
    s.add_argument("--out", default="results/table1.csv")
    s.set_defaults(func=_cmd_table)

    s = sub.add_parser("figure", help="mid-slice grid of real and generated volumes")
    s.add_argument("--real", required=True, help="folder of real volumes")
    s.add_argument("--fake", nargs="*", default=[], help="MODEL=DIR pairs")
    s.add_argument("--out", required=True, help="PNG file")
    s.add_argument("--n", type=int, default=3, help="volumes per source")
    s.add_argument("--title", default=None)
    s.set_defaults(func=_cmd_figure)

    s = sub.add_parser("curves", help="loss curves, or FID against sampling steps (+ CSV)")
    s.add_argument("kind", choices=["loss", "fid-steps"])
    s.add_argument("--run", nargs="*", default=[], help="loss: MODEL=RUN_DIR pairs (RUN/loss.csv)")
    s.add_argument("--metrics", nargs="*", default=[],
                   help="fid-steps: .../MODEL/steps/SAMPLER_STEPS/metrics.json files")
    s.add_argument("--csv", default=None, help="fid-steps: also write the collected points here")
    s.add_argument("--smoothing", type=float, default=0.9, help="loss: EMA weight in [0, 1)")
    s.add_argument("--out", required=True, help="PNG file")
    s.add_argument("--title", default=None)
    s.set_defaults(func=_cmd_curves)

    s = sub.add_parser("compare", help="table1 beside the paper's reported values")
    s.add_argument("--table", default="results/table1.csv")
    s.add_argument("--reference", default="results/paper_reference.csv")
    s.add_argument("--paper-dataset", nargs="*", default=[], help="OURS=PAPER data set pairs")
    s.add_argument("--out", default="results/table1_vs_paper.csv")
    s.set_defaults(func=_cmd_compare)

    s = sub.add_parser("convert-checkpoint",
                       help="make a run folder of the WDM authors' released weights (pfriedri/wdm-3d)")
    s.add_argument("--src", required=True, help="upstream checkpoint, e.g. brats_unet_128_1200k.pt")
    s.add_argument("--out", required=True, help="run folder to write (for 'sample --run')")
    s.add_argument("--config", default="config/paper/models/wdm_128.yaml", help="our WDM run config")
    s.add_argument("--size", type=int, default=128, help="cube side of the generated volumes")
    s.add_argument("--data", default=None, help="prepared data folder: take side and affine from it")
    s.add_argument("--step", type=int, default=None, help="step to record (default: from the name)")
    s.add_argument("--overwrite", action="store_true", help="replace checkpoints in --out")
    s.set_defaults(func=_cmd_convert_checkpoint)

    from eval.probe import add_arguments as probe_arguments  # stdlib-only import

    s = sub.add_parser("profile", help="peak memory and s/iteration of one model at one resolution")
    probe_arguments(s)
    s.set_defaults(func=_cmd_profile)

    s = sub.add_parser("memory-figure", help="probe JSONs -> memory CSV and memory-vs-resolution figure")
    s.add_argument("--profiles", nargs="+", required=True, help="JSON files of 'wdm-bench profile'")
    s.add_argument("--csv", required=True, help="output CSV (one row per probe)")
    s.add_argument("--out", required=True, help="output PNG")
    s.add_argument("--memory-limit-gb", type=float, default=None, help="limit line (GiB)")
    s.set_defaults(func=_cmd_memory_figure)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wdm-bench`` console command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(f"wdm-bench {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError, RuntimeError) as exc:
        # InputError is a ValueError; one line, no traceback (use --log-level DEBUG for it)
        log.debug("traceback", exc_info=True)
        msg = " ".join(str(exc).split())
        print(f"wdm-bench {args.command}: error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
