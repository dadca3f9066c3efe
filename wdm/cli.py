"""``wdm-bench``: the command line of the suite. Thin: parses arguments, calls the package.

Sub-commands: prepare, train, sample, evaluate, real-stats, pairwise, fid-vs-n (these four in
:mod:`wdm.cli_metrics`), settings, table, figure, curves, compare, convert-checkpoint, profile,
memory-figure, train-extractor (in :mod:`wdm.cli_extractor`) (the table :data:`COMMANDS`). Exit code 0 on
success; on any error one line ``wdm-bench <command>: error: <reason>`` on stderr and exit code 1
(2 for bad usage).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from wdm.cli_checks import Command, OneLineParser, at_least, named_values, set_threads, unit_interval_open
from wdm.cli_extractor import EXTRACTOR_COMMANDS
from wdm.cli_metrics import METRIC_COMMANDS
from wdm.cli_sanity import SANITY_COMMAND

__all__ = ["main", "build_parser", "COMMANDS", "Command"]

log = logging.getLogger("wdm")


def _cmd_prepare(a: argparse.Namespace) -> None:
    from wdm.data.prepare import check_out_folder, prepare

    check_out_folder(Path(a.out), source=a.source if a.dataset != "phantom-brain" else None,
                     overwrite=a.overwrite)
    prepare(a.dataset, a.out, source=a.source, size=a.size, seed=a.seed, n_train=a.n_train,
            n_test=a.n_test, overwrite=a.overwrite, modality=a.modality, strict=a.strict,
            threads=a.threads, progress=not a.no_progress, orientation=a.orientation,
            small_scans=a.small_scans, split=a.split, cube=a.cube, spacing_mm=a.spacing_mm)


def _cmd_train(a: argparse.Namespace) -> None:
    from wdm.cli_checks import check_run_out, name_source
    from wdm.io import InputError
    from wdm.train import train

    check_run_out(a.out, data=a.data)
    # under torchrun the job's threads are shared by the processes on this machine
    procs = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    set_threads(max(1, a.threads // procs) if a.threads else None)
    config: str | dict = a.config
    if a.flop_budget is not None:  # the workflow's compute-matched budget overrides the config's
        from wdm.config import load_run_config

        config = load_run_config(a.config)
        config["training"]["flop_budget"] = a.flop_budget
    try:
        prof = train(config, a.data, a.out, resume=a.resume, stage=a.stage,
                     progress=not a.no_progress)
    except InputError as exc:  # a config value's error raised without the file: name the config
        raise name_source(exc, a.config, (a.config, a.data, a.out), ("do not suit model",)) from None
    if prof.get("status") == "oom":  # recorded in train_profile.json; the workflow goes on
        print(f"wdm-bench train: out of memory (recorded as OOM in {Path(a.out) / 'train_profile.json'}): "
              f"{prof['error']}", file=sys.stderr)
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            sys.exit(3)  # torchrun then stops the other ranks, which may wait in a collective


def _cmd_sample(a: argparse.Namespace) -> None:
    from wdm.cli_checks import check_device, check_run_out
    from wdm.io import InputError
    from wdm.sample import sample

    if Path(a.run).is_file():
        raise InputError(f"{a.run}: --run is a file, expected a run folder written by 'wdm-bench train'")
    check_run_out(a.out, data=None)
    check_device(a.device)
    set_threads(a.threads)
    try:
        sample(a.run, a.n, a.seed, a.out, sampler=a.sampler, steps=a.steps, batch_size=a.batch_size,
               device=a.device, initial=a.initial, progress=not a.no_progress)
    except InputError as exc:
        if a.device is None and str(exc).startswith("device 'cuda'"):
            raise InputError(f"{a.run}: sampling.device of the run's config: {exc}; pass --device cpu "
                             "to sample on the CPU") from None
        raise


def _cmd_settings(a: argparse.Namespace) -> None:
    import json

    from wdm.config import EvaluationSettings, dump_yaml
    from wdm.io import InputError, check_output, write_text_atomic

    check_output(a.out)
    try:
        raw = json.loads(a.json)
    except json.JSONDecodeError as exc:
        raise InputError(f"--json: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise InputError(f"--json: expected a JSON object, got {type(raw).__name__}")
    if a.fallback_weights:  # the phantom-seg checkpoint the workflow built (evaluation.fallback)
        raw = {**raw, "fallback_weights": a.fallback_weights}
    settings = EvaluationSettings.from_mapping(raw, source=f"--json: {a.section}")
    write_text_atomic(a.out, dump_yaml({a.section: settings.as_dict()}))
    log.info("wrote %s", a.out)


def _cmd_table(a: argparse.Namespace) -> None:
    from eval.tables import build_table, write_table
    from wdm.io import check_output

    files = list(a.metrics) if a.metrics else sorted(Path(a.results).glob("*/*/*/metrics.json"))
    check_output(a.out, inputs=tuple(files))
    df = build_table(files)
    write_table(df, a.out)
    n_oom = int((df["status"] == "oom").sum())
    log.info("wrote %s (%d rows%s)", a.out, len(df), f", {n_oom} out of memory" if n_oom else "")


def _cmd_figure(a: argparse.Namespace) -> None:
    from eval.figures import sample_grid
    from wdm.io import check_output

    check_output(a.out)
    sources: dict[str, str] = {"real": a.real, **named_values(a.fake, "--fake")}
    sample_grid(sources, a.out, n=a.n, title=a.title)


def _cmd_curves(a: argparse.Namespace) -> None:
    from eval import figures_curves as fc
    from wdm.cli_checks import existing_folder
    from wdm.io import atomic_path, check_output

    if a.kind == "loss":
        runs = named_values(a.run, "--run")
        check_output(a.out, inputs=tuple(Path(r) / "loss.csv" for r in runs.values()))
        for name, run in runs.items():
            existing_folder(run, f"--run {name}")
        fc.loss_figure(runs, a.out, smoothing=a.smoothing, title=a.title)
        return
    check_output(a.out, inputs=(*a.metrics, a.csv))
    if a.csv:
        check_output(a.csv, "--csv", inputs=tuple(a.metrics))
    df = fc.collect_fid_vs_steps(a.metrics)
    if a.csv:
        with atomic_path(a.csv) as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
    fc.fid_vs_steps_figure(df, a.out, title=a.title)


def _cmd_compare(a: argparse.Namespace) -> None:
    from eval.compare import compare_to_paper, load_reference, load_table
    from wdm.io import atomic_path, check_output

    paper_datasets = named_values(a.paper_dataset, "--paper-dataset")
    check_output(a.out, inputs=(a.table, a.reference))
    df = compare_to_paper(load_table(a.table), load_reference(a.reference), paper_datasets)
    with atomic_path(a.out) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    log.info("wrote %s (%d rows)", a.out, len(df))


def _cmd_convert_checkpoint(a: argparse.Namespace) -> None:
    from wdm.cli_checks import check_run_out
    from wdm.convert import write_converted_run
    from wdm.io import InputError

    src = Path(a.src)
    if not src.is_file():
        raise InputError(f"{src}: --src {'is a folder' if src.is_dir() else 'not found'}, expected the "
                         "upstream checkpoint file (.pt)")
    check_run_out(a.out, data=a.data)
    affine = None
    if a.data:  # the affine (and side) of a prepared data folder's training volumes
        from wdm.data.prepare import split_files
        from wdm.io import load_nifti

        vol, affine = load_nifti(split_files(Path(a.data), "train")[0])
        a.size = int(vol.shape[0])
    write_converted_run(a.src, a.out, a.config, size=a.size, affine=affine, step=a.step,
                        overwrite=a.overwrite)


def _cmd_profile(a: argparse.Namespace) -> None:
    from wdm.cli_checks import check_device
    from wdm.io import InputError, check_output
    from wdm.probe import run_cli

    check_output(a.out, inputs=(a.config,))
    for flag, value in (("--resolution", a.resolution), ("--batch-size", a.batch_size),
                        ("--repeats", a.repeats), ("--sample-steps", a.sample_steps)):
        if value < 1:
            raise InputError(f"{flag} {value}: expected an integer >= 1")
    check_device(a.device)
    run_cli(a)  # an isolated child process; writes --out; raises only for a non-memory failure


def _cmd_memory_figure(a: argparse.Namespace) -> None:
    from eval.figures_memory import load_profiles, memory_figure, profile_rows, write_memory_csv
    from wdm.io import check_output

    check_output(a.csv, "--csv", inputs=(*a.profiles, a.out))
    check_output(a.out, inputs=tuple(a.profiles))
    rows = profile_rows(load_profiles(a.profiles))
    write_memory_csv(rows, a.csv)
    memory_figure(rows, a.out, memory_limit_gb=a.memory_limit_gb)


# ------------------------------------------------------------------ arguments of each command
def _args_prepare(s: argparse.ArgumentParser) -> None:
    s.add_argument("--dataset", required=True, help="data set name, e.g. phantom-brain")
    s.add_argument("--out", required=True, help="output data folder")
    s.add_argument("--source", default=None, help="folder of the raw data (real data sets)")
    s.add_argument("--size", type=at_least(1), default=32, help="cube side of the output volumes")
    s.add_argument("--seed", type=at_least(0), default=0)
    s.add_argument("--n-train", type=int, default=None,
                   help="phantom-brain: volumes (default 40); brats/lidc: cap on training cases "
                        "(default: every case not in the test set)")
    s.add_argument("--n-test", type=at_least(0), default=20, help="volumes / cases held out for testing")
    s.add_argument("--modality", default=None, choices=["t1n", "t1c", "t2w", "t2f"],
                   help="BraTS scan (default t1n, as in the paper)")
    s.add_argument("--orientation", default=None, choices=["ras", "las"],
                   help="LIDC 1 mm grid: ras (default) or las (upstream's dicom2nifti orientation)")
    s.add_argument("--small-scans", default=None, choices=["pad", "drop"],
                   help="LIDC scans smaller than the cube: pad (default) or drop (as upstream)")
    s.add_argument("--split", default="holdout", choices=["holdout", "upstream"],
                   help="brats/lidc: holdout (test cases not trained on, default) or upstream "
                        "(train on every case; test/ copies n-test of them)")
    s.add_argument("--cube", type=at_least(2), default=None,
                   help="brats/lidc: side of the cube before pooling (default 256; 512 for 512^3)")
    s.add_argument("--spacing-mm", type=float, default=None,
                   help="LIDC resampling grid in mm (default 1; 0.5 for 512^3)")
    s.add_argument("--strict", action="store_true",
                   help="turn every excluded case (excluded.csv) into an error")
    s.add_argument("--threads", type=at_least(1), default=1, help="cases processed in parallel")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _args_train(s: argparse.ArgumentParser) -> None:
    s.add_argument("--config", required=True, help="run config YAML (config/models/*.yaml)")
    s.add_argument("--data", required=True, help="prepared data folder")
    s.add_argument("--out", required=True, help="run folder (checkpoints, loss log, profile)")
    s.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    s.add_argument("--stage", default=None,
                   help="training stage of a staged model (ldm: vqgan, diffusion); default: the config's")
    s.add_argument("--flop-budget", type=float, default=None, metavar="FLOPS",
                   help="train for this many FLOPs (steps derived; overrides training.flop_budget)")
    s.add_argument("--threads", type=at_least(1), default=None, help="torch CPU threads")
    s.add_argument("--no-progress", action="store_true")


def _args_sample(s: argparse.ArgumentParser) -> None:
    s.add_argument("--run", required=True, help="run folder written by train")
    s.add_argument("--n", type=int, required=True, help="number of volumes")
    s.add_argument("--seed", type=at_least(0), required=True)
    s.add_argument("--out", required=True, help="output folder for sample_*.nii.gz")
    s.add_argument("--sampler", choices=["ddpm", "ddim"], default=None)
    s.add_argument("--steps", type=int, default=None, help="sampling steps")
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    s.add_argument("--threads", type=at_least(1), default=None)
    s.add_argument("--initial", action="store_true",
                   help="sample the run's untrained initialisation (its seed), not its checkpoint")
    s.add_argument("--no-progress", action="store_true")


def _args_settings(s: argparse.ArgumentParser) -> None:
    s.add_argument("--section", required=True, choices=["evaluation"], help="config section")
    s.add_argument("--json", required=True,
                   help="the section as a JSON object (absent fields: the schema's defaults)")
    s.add_argument("--out", required=True, help="YAML file to write, {SECTION: resolved settings}")
    s.add_argument("--fallback-weights", default=None, metavar="PATH",
                   help="record this phantom-seg checkpoint as fallback_weights")


def _args_table(s: argparse.ArgumentParser) -> None:
    s.add_argument("--metrics", nargs="*", help="metrics.json files (default: all under --results)")
    s.add_argument("--results", default="results", help="results folder to search")
    s.add_argument("--out", default="results/table1.csv")


def _args_figure(s: argparse.ArgumentParser) -> None:
    s.add_argument("--real", required=True, help="folder of real volumes")
    s.add_argument("--fake", nargs="*", default=[], help="MODEL=DIR pairs")
    s.add_argument("--out", required=True, help="PNG file")
    s.add_argument("--n", type=at_least(1), default=3, help="volumes per source")
    s.add_argument("--title", default=None)


def _args_curves(s: argparse.ArgumentParser) -> None:
    s.add_argument("kind", choices=["loss", "fid-steps"])
    s.add_argument("--run", nargs="*", default=[], help="loss: MODEL=RUN_DIR pairs (RUN/loss.csv)")
    s.add_argument("--metrics", nargs="*", default=[],
                   help="fid-steps: .../MODEL/steps/SAMPLER_STEPS/metrics.json files")
    s.add_argument("--csv", default=None, help="fid-steps: also write the collected points here")
    s.add_argument("--smoothing", type=unit_interval_open, default=0.9, help="loss: EMA weight in [0, 1)")
    s.add_argument("--out", required=True, help="PNG file")
    s.add_argument("--title", default=None)


def _args_compare(s: argparse.ArgumentParser) -> None:
    s.add_argument("--table", default="results/table1.csv")
    s.add_argument("--reference", default="results/paper_reference.csv")
    s.add_argument("--paper-dataset", nargs="*", default=[], help="OURS=PAPER data set pairs")
    s.add_argument("--out", default="results/table1_vs_paper.csv")


def _args_convert_checkpoint(s: argparse.ArgumentParser) -> None:
    s.add_argument("--src", required=True, help="upstream checkpoint, e.g. brats_unet_128_1200k.pt")
    s.add_argument("--out", required=True, help="run folder to write (for 'sample --run')")
    s.add_argument("--config", default="config/paper/models/wdm_128.yaml", help="our WDM run config")
    s.add_argument("--size", type=int, default=128, help="cube side of the generated volumes")
    s.add_argument("--data", default=None, help="prepared data folder: take side and affine from it")
    s.add_argument("--step", type=int, default=None, help="step to record (default: from the name)")
    s.add_argument("--overwrite", action="store_true", help="replace checkpoints in --out")


def _args_profile(s: argparse.ArgumentParser) -> None:
    from wdm.probe import add_arguments  # stdlib-only import

    add_arguments(s)


def _args_memory_figure(s: argparse.ArgumentParser) -> None:
    s.add_argument("--profiles", nargs="+", required=True, help="JSON files of 'wdm-bench profile'")
    s.add_argument("--csv", required=True, help="output CSV (one row per probe)")
    s.add_argument("--out", required=True, help="output PNG")
    s.add_argument("--memory-limit-gb", type=float, default=None, help="limit line (GiB)")


# ------------------------------------------------------------------ the command table
COMMANDS: tuple[Command, ...] = (
    Command("prepare", "build or preprocess a data set into a data folder", _args_prepare, _cmd_prepare),
    Command("train", "train a model from a data folder into a run folder", _args_train, _cmd_train),
    Command("sample", "sample N volumes from a trained run", _args_sample, _cmd_sample),
    *METRIC_COMMANDS,
    Command("settings", "validate a config section (JSON) and write it resolved as YAML",
            _args_settings, _cmd_settings),
    Command("table", "collect metrics into the comparison table", _args_table, _cmd_table),
    Command("figure", "mid-slice grid of real and generated volumes", _args_figure, _cmd_figure),
    Command("curves", "loss curves, or FID against sampling steps (+ CSV)", _args_curves, _cmd_curves),
    Command("compare", "table1 beside the paper's reported values", _args_compare, _cmd_compare),
    Command("convert-checkpoint",
            "make a run folder of the WDM authors' released weights (pfriedri/wdm-3d)",
            _args_convert_checkpoint, _cmd_convert_checkpoint),
    Command("profile", "peak memory and s/iteration of one model at one resolution", _args_profile,
            _cmd_profile),
    Command("memory-figure", "probe JSONs -> memory CSV and memory-vs-resolution figure",
            _args_memory_figure, _cmd_memory_figure),
    *EXTRACTOR_COMMANDS,
    SANITY_COMMAND,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation): one sub-parser per :data:`COMMANDS`."""
    p = OneLineParser(prog="wdm-bench", description=__doc__.split("\n")[0])
    p.add_argument("--log-level", default=os.environ.get("WDM_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS:
        s = sub.add_parser(cmd.name, help=cmd.help)
        cmd.add_arguments(s)
        s.set_defaults(func=cmd.run)
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
    except Exception as exc:  # a bug, not bad input: still one line, the traceback at DEBUG
        log.debug("traceback", exc_info=True)
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())
        print(f"wdm-bench {args.command}: error: internal error ({msg}); run with --log-level DEBUG "
              "for the traceback", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
