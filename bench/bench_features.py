"""Benchmark: MedicalNet 3D ResNet feature throughput (volumes/s) at 64³ and 128³.

Issue 7, point 4. The FID feature extractor of the WDM evaluation protocol (MedicalNet ResNet-50,
Chen et al. 2019, arXiv 1904.00625; dilated layer3/layer4, global average pooling -> 2048
features; built by :func:`eval.features.medicalnet_resnet`) is run through the evaluation path
itself, :func:`eval.features.extract_features`, on ``--volumes`` random volumes in [0, 1] of shape
(size, size, size) per timed run, in batches of ``--batch-size`` (default 4, the evaluation
default). By default the weights are untrained and drawn from ``--seed``: throughput does not
depend on the weight values, and no checkpoint download is needed. ``--weights`` takes any spec
that :func:`eval.medicalnet_weights.resolve_weights` accepts (e.g. ``resnet_50_23dataset``) to time the
released network instead; the label of what ran is in the CSV.

Per size the script reports the median seconds of a run over ``--repeats`` (≥ 3) runs after one
warm-up run, ``volumes_per_s``, ``s_per_volume``, its ratio to the smallest size
(``ratio_vs_smallest``; the voxel ratio is 8 per doubling of the side) and the peak resident
memory above the level before the size's runs (``peak_rss_delta_mb``, sampled every 5 ms by
:class:`bench.memory.PeakRSS`). Writes ``results/bench/features.csv``.

Cost at the defaults (ResNet-50, batch 4, 4 volumes per run, 2 threads): a 64³ volume took
1.5–3 s on a busy 2-core machine and 128³ costs up to 8× that, so the 4 runs (warm-up included)
of 4 volumes take about 0.5–1 min at 64³ and 2–7 min at 128³; ≲ 8 min in all.

Run:  python bench/bench_features.py [--sizes 64 128] [--batch-size 4] [--volumes 4] [--repeats 3]
                                      [--threads 2] [--depth 50] [--weights none]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import MIN_REPEATS, print_rows, setup_logging, summarize, time_repeats, write_rows  # noqa: E402
from bench.memory import PeakRSS  # noqa: E402

log = logging.getLogger("bench.features")

COLUMNS = ["size", "batch_size", "volumes", "median_s", "min_s", "volumes_per_s", "s_per_volume",
           "ratio_vs_smallest", "peak_rss_delta_mb", "features", "weights", "repeats", "threads"]


def random_volumes(n: int, size: int, seed: int) -> list[torch.Tensor]:
    """``n`` float32 volumes of shape (size, size, size), uniform in [0, 1], from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand((size, size, size), generator=g) for _ in range(n)]


def bench_size(model: torch.nn.Module, size: int, a: argparse.Namespace) -> dict[str, Any]:
    """Time :func:`extract_features` on ``a.volumes`` volumes of ``size``³; one CSV row."""
    from eval.features import extract_features

    vols = random_volumes(a.volumes, size, a.seed)
    feats: list[Any] = []

    def run() -> None:
        feats[:] = [extract_features(model, vols, batch_size=a.batch_size)]

    with PeakRSS() as mem:
        times = time_repeats(run, repeats=a.repeats, warmup=a.warmup)
    s = summarize(times)
    n_features = int(feats[0].shape[1])
    log.info("%d^3: median %.2f s for %d volumes (%.3f volumes/s), peak RSS +%.0f MiB", size,
             s["median_s"], a.volumes, a.volumes / s["median_s"], mem.delta_mb)
    return {"size": size, "batch_size": a.batch_size, "volumes": a.volumes, "median_s": s["median_s"],
            "min_s": s["min_s"], "max_s": s["max_s"], "volumes_per_s": a.volumes / s["median_s"],
            "s_per_volume": s["median_s"] / a.volumes, "peak_rss_delta_mb": mem.delta_mb,
            "peak_rss_mb": mem.peak_mb, "features": n_features, "depth": a.depth,
            "repeats": s["repeats"], "threads": a.threads}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="volume sides in voxels")
    p.add_argument("--batch-size", type=int, default=4, help="extract_features batch size")
    p.add_argument("--volumes", type=int, default=None,
                   help="volumes per timed run (default: one batch)")
    p.add_argument("--repeats", type=int, default=MIN_REPEATS, help=f"timed runs (>= {MIN_REPEATS})")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per size before timing")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--depth", type=int, default=50, help="MedicalNet ResNet depth")
    p.add_argument("--weights", default="none",
                   help="weights spec for eval.medicalnet_weights.resolve_weights "
                        "(default: untrained, seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="features", help="CSV path, or a name under results/bench/")
    a = p.parse_args(argv)
    if a.repeats < MIN_REPEATS:
        p.error(f"--repeats must be >= {MIN_REPEATS}, got {a.repeats}")
    a.volumes = a.batch_size if a.volumes is None else a.volumes
    for name in ("batch_size", "volumes", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.warmup < 0 or min(a.sizes) < 1:
        p.error("--warmup must be >= 0 and every size >= 1")
    return a


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; return the rows written to the CSV."""
    from eval.features import medicalnet_resnet
    from eval.medicalnet_weights import resolve_weights

    a = parse_args(argv)
    setup_logging()
    torch.set_num_threads(a.threads)
    path, label = resolve_weights(a.weights, depth=a.depth, seed=a.seed)
    model = medicalnet_resnet(a.depth, path, seed=a.seed)
    log.info("MedicalNet resnet%d, weights: %s", a.depth, label)
    rows = []
    for size in sorted(set(a.sizes)):
        row = bench_size(model, size, a)
        row["weights"] = label
        rows.append(row)
    for r in rows:
        r["ratio_vs_smallest"] = r["s_per_volume"] / rows[0]["s_per_volume"]
    write_rows(rows, a.out)
    print_rows(rows, COLUMNS)
    sys.stdout.write(f"MedicalNet resnet{a.depth} ({label}), batch {a.batch_size}, {a.threads} threads: "
                     + ", ".join(f"{r['size']}^3 {r['volumes_per_s']:.3g} volumes/s" for r in rows)
                     + "\n")
    return rows


if __name__ == "__main__":
    main()
