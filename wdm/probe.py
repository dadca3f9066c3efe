"""Probe: peak memory and seconds per iteration of one model at one resolution.

One probe builds a model from a run config at volume shape (R, R, R) (``get_model_class(cfg["model"])
(cfg, shape)``, seeded as :func:`wdm.train.train` does), draws a random batch of ``batch_size`` volumes
in [-1, 1] from a seeded generator and measures

* mode ``train``: one untimed warm-up step, then ``repeats`` timed training steps (the model's
  ``training_step`` with its ``configure_optimizers``, or ``loss`` -> backward -> AdamW step as in
  :mod:`wdm.train`). Steps are numbered from :data:`STEADY_STEP`, so step-dependent terms (the
  VQ-GAN discriminator after ``disc_start``) are on, as during most of training;
* mode ``sample``: one untimed warm-up and ``repeats`` timed calls of ``generate(batch_size, steps=k)``
  with ``k = sample_steps`` (default 2) on the config's sampler. ``s_per_it`` is the time of one
  sampling step (the forward passes of ``modules()["network"]``, timed by hooks, per call);
  ``s_per_volume`` extrapolates to the config's ``sampling.steps`` (DDPM: T) as
  ``(steps * s_per_it + decoding/other time of the k-step run) / batch_size``. A GAN has no sampling
  steps: its ``s_per_it`` is one ``generate`` call.

Options: activation checkpointing (``network.use_checkpoint: true``, :mod:`wdm.networks`; only the
U-Net has it) and precision ``bf16`` (``torch.autocast(device_type, dtype=torch.bfloat16)`` around the
forward pass and loss; around the whole ``training_step`` for models that own their backward).

Memory: on CUDA ``torch.cuda.max_memory_allocated`` (``peak_memory_kind: cuda_max_allocated``); on
CPU the peak resident set size of the process (``ru_maxrss``), which cannot be reset. Each probe
therefore runs in its own child process (:func:`probe_isolated`, ``python -m wdm.probe``) and the
result also gives the RSS right after imports (``rss_baseline_gb``) and ``peak_minus_baseline_gb``.

Out of memory: on CUDA ``memory_limit_gb`` sets ``torch.cuda.set_per_process_memory_fraction``; on CPU
it caps the child's data segment with ``RLIMIT_DATA`` (Linux >= 4.7
counts every private writable mapping, i.e. torch's tensor storage; ``RLIMIT_AS`` where DATA is not
available, which also counts mapped libraries and thread stacks and so trips earlier). An allocation
past the cap fails inside torch with ``RuntimeError: DefaultCPUAllocator: can't allocate memory``
(verified with torch 2.13 CPU; thread creation of a 2-thread pool is unaffected). That, a
``torch.OutOfMemoryError`` or a ``MemoryError`` gives ``status: oom``; so does a child killed by
SIGKILL (the kernel OOM killer when physical memory runs out first) or, under a memory limit, by
SIGABRT/SIGSEGV/SIGBUS. Other failures give ``status: error``; a child past ``timeout_s`` is killed
(``status: timeout``). The driver never raises for a failed probe.

Counts (optional, additive fields, made in the untimed warm-up): see :mod:`wdm.probe_counts`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wdm.probe_counts import allocation_peak_bytes, count_memory, warmup_counts

if TYPE_CHECKING:
    import torch

__all__ = ["MODES", "PRECISIONS", "STEADY_STEP", "allocation_peak_bytes", "apply_memory_limit", "measure",
           "probe_isolated", "add_arguments", "run_cli", "main"]

log = logging.getLogger(__name__)

MODES = ("train", "sample")
PRECISIONS = ("fp32", "bf16")
#: Index of the first probed training step (see the module docstring).
STEADY_STEP = 1_000_000
_REPO = Path(__file__).resolve().parents[1]
_GB = 1e9
_OOM_SIGNALS_UNDER_LIMIT = (signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS)


def apply_memory_limit(gb: float) -> str:
    """Cap this process's memory at ``gb`` GiB (2^30 bytes); returns the rlimit used."""
    name = "RLIMIT_DATA" if hasattr(resource, "RLIMIT_DATA") else "RLIMIT_AS"
    lim = int(gb * 2**30)
    resource.setrlimit(getattr(resource, name), (lim, lim))
    return name


def _rss_gb() -> float:
    """Current resident set size in GB (Linux /proc; the peak elsewhere)."""
    from wdm.profiling import current_rss_gb, max_rss_gb

    rss = current_rss_gb()
    return max_rss_gb() if rss is None else rss


def _build(cfg: dict, shape: tuple[int, int, int]) -> tuple[Any, list[str]]:
    """The model as a probe measures it (:meth:`~wdm.model.BenchmarkModel.for_probe`) and notes;
    a U-Net too deep for its input grid loses its last levels (noted)."""
    from wdm.model import model_class
    from wdm.networks import NETWORK_PRESETS

    cls = model_class(cfg)
    notes: list[str] = []
    while True:
        try:
            model, stand_ins = cls.for_probe(cfg, shape)
            return model, notes + stand_ins
        except ValueError as exc:  # InputError is a ValueError
            net = cfg["network"]
            preset = NETWORK_PRESETS.get(net["preset"], {})
            mult = list(net.get("channel_mult") or preset.get("channel_mult", []))
            if "divisible" not in str(exc) or len(mult) < 2:
                raise
            net["channel_mult"] = mult[:-1]
            notes = [f"network.channel_mult truncated to {mult[:-1]} to fit the {shape} volumes"]
            log.warning("%s", notes[0])


@contextlib.contextmanager
def _autocast(device: torch.device, precision: str) -> Iterator[None]:
    import torch

    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def measure(cfg: dict, resolution: int, mode: str, *, batch_size: int = 1, repeats: int = 3,
            checkpointing: bool = False, precision: str = "fp32", sample_steps: int = 2,
            device: str = "cpu", seed: int = 0, rss_baseline_gb: float | None = None,
            count_flops: bool = False, count_alloc: bool = False) -> dict[str, Any]:
    """Measure in this process (see the module docstring); OOM and other errors become a status.

    Args:
        cfg: run config (validated and filled here).
        resolution: cube side R; the batch is (batch_size, 1, R, R, R) in [-1, 1].
        mode: ``train`` or ``sample``.
    """
    import torch

    from wdm.config import config_hash, resolve_run_config
    from wdm.io import code_version
    from wdm.model import model_class
    from wdm.records import PROBE, make_record

    if mode not in MODES or precision not in PRECISIONS:
        raise ValueError(f"mode must be one of {MODES} and precision one of {PRECISIONS}")
    cfg = resolve_run_config(cfg)
    if checkpointing:
        cfg["network"]["use_checkpoint"] = True
    cfg["training"]["precision"] = precision
    dev = torch.device(device)
    baseline = _rss_gb() if rss_baseline_gb is None else rss_baseline_gb
    res = make_record(
        PROBE, model=cfg["model"], stage=model_class(cfg).stage, mode=mode,
        resolution=int(resolution), batch_size=batch_size,
        options={"checkpointing": checkpointing, "precision": precision, "network": cfg["network"]},
        s_per_it_all=[], config_hash=config_hash(cfg), code_version=code_version())
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        _run(cfg, res, int(resolution), mode, batch_size, repeats, sample_steps, dev, seed,
             counts=(count_flops, count_alloc))
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a row, OOM first
        if isinstance(exc, KeyboardInterrupt):
            raise
        from wdm.oom import is_out_of_memory

        res["status"] = "oom" if is_out_of_memory(exc) else "error"
        res["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
    _record_memory(res, dev, baseline)
    return res


def _record_memory(res: dict[str, Any], dev: torch.device, baseline: float) -> None:
    """The peak memory of the probe (CUDA allocations, or the process's peak RSS) into ``res``."""
    import gc

    import torch

    from wdm.profiling import device_description, max_rss_gb

    gc.collect()
    res["device"] = device_description(dev)
    if dev.type == "cuda":
        res.update(peak_memory_gb=torch.cuda.max_memory_allocated(dev) / _GB, rss_baseline_gb=0.0,
                   peak_memory_kind="cuda_max_allocated")
    else:
        res.update(peak_memory_gb=max_rss_gb(), rss_baseline_gb=baseline,
                   peak_memory_kind="process_peak_rss")
    res["peak_minus_baseline_gb"] = res["peak_memory_gb"] - res["rss_baseline_gb"]


def _run(cfg: dict, res: dict, r: int, mode: str, batch: int, repeats: int, sample_steps: int,
         dev: torch.device, seed: int, counts: tuple[bool, bool] = (False, False)) -> None:
    """Build, step and time; fills ``res`` in place (so a failure keeps what was measured)."""
    import torch

    torch.manual_seed(cfg["training"]["seed"])
    model, notes = _build(cfg, (r, r, r))
    res["note"] = "; ".join(notes) or None
    gen = torch.Generator(device=dev).manual_seed(seed)
    if mode == "train":
        times = _time_training(model, cfg, res, r, batch, repeats, dev, gen, counts)
    else:
        times = _time_sampling(model, cfg, res, batch, repeats, sample_steps, dev, gen, counts)
    res["s_per_it_all"] = times
    res["s_per_it"] = statistics.median(times)


def _sync(dev: torch.device) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)


def _count_parameters(res: dict[str, Any], modules: dict[str, Any]) -> None:
    params = [p for m in modules.values() for p in m.parameters()]
    res["n_parameters"] = sum(p.numel() for p in params)
    res["n_trainable_parameters"] = sum(p.numel() for p in params if p.requires_grad)


def _time_training(model: Any, cfg: dict, res: dict[str, Any], r: int, batch: int, repeats: int,
                   dev: torch.device, gen: torch.Generator,
                   counts: tuple[bool, bool] = (False, False)) -> list[float]:
    """One warm-up and ``repeats`` timed training steps, set up exactly as :mod:`wdm.train` does."""
    import torch

    from wdm.loop import setup_training

    training = setup_training(model, cfg["training"], dev)
    res["options"]["checkpointing"] = training.activation_checkpointing
    _count_parameters(res, training.modules)
    x = torch.rand((batch, 1, r, r, r), generator=gen, device=dev) * 2.0 - 1.0
    sync, times = _sync(dev), []
    for i in range(1 + repeats):
        sync()
        t0 = time.perf_counter()
        with warmup_counts(res, counts if i == 0 else (False, False), training.modules, x,
                            optimizers=training.optimizers):
            training.step(model, x, gen, STEADY_STEP + i)
        sync()
        if i:
            times.append(time.perf_counter() - t0)
    return times


def _time_sampling(model: Any, cfg: dict, res: dict[str, Any], batch: int, repeats: int,
                   sample_steps: int, dev: torch.device, gen: torch.Generator,
                   counts: tuple[bool, bool] = (False, False)) -> list[float]:
    """One warm-up and ``repeats`` timed ``generate`` calls of ``k = sample_steps`` steps; the
    sampling network's forward passes are timed by hooks (a one-pass model: the whole call)."""
    import torch

    modules = model.modules()
    for m in modules.values():
        m.to(dev).eval()
    res["options"]["checkpointing"] = model.activation_checkpointing()
    _count_parameters(res, modules)
    scfg, precision, sync = cfg["sampling"], cfg["training"]["precision"], _sync(dev)
    net = model.sampling_network()
    full_steps = model.network_evaluations(scfg)
    k = min(sample_steps, full_steps)
    calls, starts, totals, times = [], [], [], []
    def pre_hook(*_: Any) -> None:
        sync()
        starts.append(time.perf_counter())

    def post_hook(*_: Any) -> None:
        sync()
        calls.append(time.perf_counter() - starts.pop())

    if net is not None:
        net.register_forward_pre_hook(pre_hook)
        net.register_forward_hook(post_hook)
    with torch.no_grad():
        for i in range(1 + repeats):
            calls.clear()
            sync()
            t0 = time.perf_counter()
            with _autocast(dev, precision), warmup_counts(res, counts if i == 0 else (False, False),
                                                                 modules):
                model.generate(batch, gen, sampler=scfg["sampler"], steps=k, eta=scfg["eta"],
                               device=dev)
            sync()
            if i:
                totals.append(time.perf_counter() - t0)
                times.append(sum(calls) / len(calls) if calls else totals[-1])
    s_step, s_total = statistics.median(times), statistics.median(totals)
    other = max(s_total - s_step * k, 0.0) if net is not None else 0.0  # decoding, sampler maths
    res.update(sampler=scfg["sampler"] if net is not None else None, sampler_steps=full_steps,
               probe_sample_steps=k, s_generate_probe=s_total,
               s_per_volume=(full_steps * s_step + other) / batch)
    return times


# -- isolation ----------------------------------------------------------------------------------------
def probe_isolated(config: str | os.PathLike | dict, resolution: int, mode: str, *,
                   memory_limit_gb: float | None = None, timeout_s: float | None = None,
                   threads: int | None = None, **options: Any) -> dict[str, Any]:
    """Run :func:`measure` in a fresh child process (``python -m wdm.probe``); never raises for a
    failed probe. ``options``: the keyword arguments of :func:`measure`. Adds ``wall_s``,
    ``child_peak_rss_gb`` (from ``wait4``, also for a killed child) and the memory-limit options."""
    from wdm.config import dump_yaml, load_run_config

    cfg = load_run_config(config) if not isinstance(config, dict) else config
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wdm-probe-") as tmp:
        cfg_path, out, err_path = Path(tmp) / "run.yaml", Path(tmp) / "probe.json", Path(tmp) / "stderr"
        cfg_path.write_text(dump_yaml(cfg))
        cmd = [sys.executable, "-m", "wdm.probe", "--config", str(cfg_path), "--resolution",
               str(resolution), "--mode", mode, "--out", str(out)]
        for key, val in options.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(val, bool):
                cmd += [flag] if val else []
            elif val is not None:
                cmd += [flag, str(val)]
        if memory_limit_gb:
            cmd += ["--memory-limit-gb", str(memory_limit_gb)]
        if threads:
            cmd += ["--threads", str(threads)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_REPO),
                                                                          os.environ.get("PYTHONPATH")])))
        log.info("probe %s %s at %d^3 %s (limit %s GiB)", cfg.get("model"), mode, resolution, options,
                 memory_limit_gb)
        with open(err_path, "w") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=_REPO)
            status, usage, timed_out = _wait(proc, timeout_s)
        code = os.waitstatus_to_exitcode(status)
        stderr_tail = " | ".join(err_path.read_text(errors="replace").strip().splitlines()[-5:])
        from wdm.profiling import rusage_max_rss_gb

        child_peak = rusage_max_rss_gb(usage)
        if out.exists() and code == 0:
            res = json.loads(out.read_text())
        else:
            res = _failed_probe(cfg, mode, resolution, options, child_peak, code, timed_out,
                                timeout_s, memory_limit_gb, stderr_tail)
    res.setdefault("options", {}).update(memory_limit_gb=memory_limit_gb, threads=threads)
    res["child_peak_rss_gb"] = child_peak
    res["wall_s"] = time.perf_counter() - t0
    log.info("-> %s: %s s/it, peak %.3g GB%s", res["status"], _fmt(res.get("s_per_it")),
             res.get("peak_memory_gb") or float("nan"), f" ({res['error']})" if res.get("error") else "")
    return res


def _failed_probe(cfg: dict, mode: str, resolution: int, options: dict[str, Any],
                  child_peak: float, code: int, timed_out: bool, timeout_s: float | None,
                  memory_limit_gb: float | None, stderr_tail: str) -> dict[str, Any]:
    """The record of a child that wrote nothing: timeout, killed for memory, or another error."""
    from wdm.records import PROBE, make_record

    if timed_out:
        status, error = "timeout", f"killed after the {timeout_s:.0f} s timeout"
    elif code < 0 and (-code == signal.SIGKILL or (memory_limit_gb and -code in _OOM_SIGNALS_UNDER_LIMIT)):
        status, error = "oom", (f"child killed by {signal.Signals(-code).name} "
                                "(out of memory: kernel OOM killer or the memory limit)")
    else:
        status, error = "error", f"child exited with {code}: {stderr_tail[-500:]}"
    return make_record(PROBE, status, error, model=cfg.get("model"), mode=mode,
                       resolution=int(resolution), batch_size=options.get("batch_size", 1),
                       s_per_it_all=[], peak_memory_gb=child_peak, options=dict(options))


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _wait(proc: subprocess.Popen, timeout_s: float | None) -> tuple[int, Any, bool]:
    """``os.wait4`` the child (its rusage holds the peak RSS), killing it after ``timeout_s``."""
    deadline = None if not timeout_s else time.monotonic() + timeout_s
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, 0 if timed_out else os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
            return status, usage, timed_out
        if deadline is not None and time.monotonic() > deadline:
            proc.kill()
            timed_out = True
        time.sleep(0.05)


# -- command line -------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The probe's options (shared by ``python -m wdm.probe`` and ``wdm-bench profile``)."""
    p.add_argument("--config", required=True, help="run config YAML (config/models/*.yaml)")
    p.add_argument("--resolution", type=int, required=True, help="cube side R of the volumes")
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed steps / sampling runs")
    p.add_argument("--checkpointing", action="store_true", help="network.use_checkpoint: true")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--sample-steps", type=int, default=2, help="sampling steps run per timed call")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-limit-gb", type=float, default=None, help="memory cap in GiB (CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--timeout", type=float, default=None, help="kill the probe after this many s")
    p.add_argument("--count-flops", action="store_true",
                   help="count the warm-up's FLOPs (flops_per_it; raises a training step's peak)")
    p.add_argument("--count-alloc", action="store_true",
                   help="record the warm-up's allocation peak (alloc_peak_gb)")
    p.add_argument("--count-memory", action="store_true",
                   help="train mode: add count_training_memory after measuring (count_* fields)")


def _options(a: argparse.Namespace) -> dict[str, Any]:
    return {"batch_size": a.batch_size, "repeats": a.repeats, "checkpointing": a.checkpointing,
            "precision": a.precision, "sample_steps": a.sample_steps, "device": a.device, "seed": a.seed,
            "count_flops": a.count_flops, "count_alloc": a.count_alloc}


def run_cli(a: argparse.Namespace) -> dict[str, Any]:
    """``wdm-bench profile``: an isolated probe -> ``--out`` (JSON, atomic). A probe that failed for
    another reason than memory (``status: error``) raises RuntimeError after writing its JSON."""
    from wdm.io import write_json_atomic

    res = probe_isolated(a.config, a.resolution, a.mode, memory_limit_gb=a.memory_limit_gb,
                         timeout_s=a.timeout, threads=a.threads, **_options(a))
    write_json_atomic(a.out, res)
    if res["status"] == "error":
        raise RuntimeError(f"probe failed: {res['error']}")
    return res


def main(argv: Sequence[str] | None = None) -> int:
    """Child entry point: ``python -m wdm.probe`` measures in this process (no isolation)."""
    p = argparse.ArgumentParser(prog="python -m wdm.probe", description=__doc__.split("\n")[0])
    add_arguments(p)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from wdm.config import load_run_config
    from wdm.io import write_json_atomic
    from wdm.model import model_stages

    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_run_config(a.config)
    model_stages(cfg["model"])  # import the model's modules before the baseline is read
    baseline = _rss_gb()
    mechanism = None
    if a.memory_limit_gb and torch.device(a.device).type == "cuda":
        dev = torch.device(a.device)
        total = torch.cuda.get_device_properties(dev).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, a.memory_limit_gb * 2**30 / total), dev)
        mechanism = "cuda_memory_fraction"
    elif a.memory_limit_gb:
        mechanism = apply_memory_limit(a.memory_limit_gb)
    res = measure(cfg, a.resolution, a.mode, rss_baseline_gb=baseline, **_options(a))
    res["options"].update(memory_limit_gb=a.memory_limit_gb, limit_mechanism=mechanism)
    if a.count_memory and a.mode == "train" and res["status"] == "ok":
        count_memory(cfg, a.resolution, res, a.batch_size)
    write_json_atomic(a.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
