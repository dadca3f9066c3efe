"""Benchmark real-data preprocessing: cases per minute and peak memory at 128³ and 256³ outputs.

Writes synthetic full-size cases in the real on-disk formats (BraTS: 240×240×155 float32 NIfTI;
LIDC-IDRI: 512×512 int16 DICOM slices, 0.7 mm pixels, 2 mm slices), then runs
``wdm.data.prepare.prepare`` once per (data set, output size) in a fresh subprocess so that the
peak resident memory (``ru_maxrss``) belongs to that run alone. Prints a table and writes
``results/bench/prepare.csv``. Runs outside pytest:

    python bench/bench_prepare.py [--cases 3] [--threads 2] [--slices 160]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wdm.io import write_text_atomic  # noqa: E402

log = logging.getLogger("bench_prepare")


def write_brats(root: Path, n: int) -> None:
    """``n`` BraTS-style case folders with a smooth head-like t1n volume (240×240×155)."""
    import nibabel as nib

    g = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in (240, 240, 155)], indexing="ij")
    r2 = g[0] ** 2 / 0.6 + g[1] ** 2 / 0.8 + g[2] ** 2 / 0.9
    for i in range(n):
        rng = np.random.default_rng(i)
        vol = np.where(r2 < 1, 400 + 300 * g[0] * (i + 1) / n + rng.normal(0, 20, r2.shape), 0)
        case = f"BraTS-GLI-{i:05d}-000"
        (root / case).mkdir(parents=True)
        aff = np.diag([-1.0, -1.0, 1.0, 1.0])
        nib.save(nib.Nifti1Image(vol.astype(np.float32), aff), str(root / case / f"{case}-t1n.nii.gz"))


def write_lidc(root: Path, n: int, slices: int) -> None:
    """``n`` LIDC-style patients, each one CT series of ``slices`` 512×512 int16 DICOM files."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    yy, xx = np.mgrid[0:512, 0:512].astype(np.float32)
    body = ((xx - 256) / 200) ** 2 + ((yy - 256) / 160) ** 2 < 1
    for i in range(n):
        rng = np.random.default_rng(i)
        folder = root / f"LIDC-IDRI-{i:04d}" / "study" / "series"
        folder.mkdir(parents=True)
        series, study = generate_uid(), generate_uid()
        for k in range(slices):
            hu = np.where(body, 40 + rng.normal(0, 30, body.shape), -1000).astype(np.float32)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            path = folder / f"1-{k + 1:03d}.dcm"
            ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
            ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "CT", study, series
            ds.InstanceNumber = slices - k  # feet-first numbering: reversed file order
            ds.ImagePositionPatient = ["-180", "-180", f"{-2.0 * k:g}"]
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            ds.PixelSpacing, ds.SliceThickness = ["0.703125", "0.703125"], "2"
            ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
            ds.Rows = ds.Columns = 512
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.PixelData = np.round(hu + 1024).astype("<i2").tobytes()
            ds.save_as(str(path), enforce_file_format=True)


def run_one(dataset: str, source: str, size: int, out: str, threads: int) -> None:
    """Child process: one prepare run; prints a JSON line with seconds and peak RSS."""
    from wdm.data.prepare import prepare

    t0 = time.perf_counter()
    prepare(dataset, out, source=source, size=size, n_test=1, threads=threads, progress=False)
    dt = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    n = len(json.loads((Path(out) / "dataset.json").read_text())["cases"])
    print(json.dumps({"seconds": dt, "peak_mb": peak_mb, "cases": n}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slices", type=int, default=160, help="slices per synthetic LIDC series")
    p.add_argument("--datasets", nargs="*", default=["brats", "lidc"])
    p.add_argument("--sizes", nargs="*", type=int, default=[128, 256])
    p.add_argument("--out", default=str(REPO / "results" / "bench" / "prepare.csv"))
    p.add_argument("--one", nargs=4, metavar=("DATASET", "SOURCE", "SIZE", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        run_one(a.one[0], a.one[1], int(a.one[2]), a.one[3], a.threads)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_prepare.") as tmp:
        for ds in a.datasets:
            src = Path(tmp) / f"src_{ds}"
            t0 = time.perf_counter()
            (write_brats if ds == "brats" else lambda r, n: write_lidc(r, n, a.slices))(src, a.cases)
            log.info("wrote %d synthetic %s cases in %.1f s", a.cases, ds, time.perf_counter() - t0)
            for size in a.sizes:
                out = Path(tmp) / f"out_{ds}_{size}"
                res = subprocess.run([sys.executable, __file__, "--threads", str(a.threads), "--one", ds,
                                      str(src), str(size), str(out)], capture_output=True, text=True,
                                     check=False)
                if res.returncode != 0:
                    raise SystemExit(f"{ds} {size}: failed\n{res.stderr[-3000:]}")
                r = json.loads(res.stdout.strip().splitlines()[-1])
                rows.append({"dataset": ds, "size": size, "cases": r["cases"], "threads": a.threads,
                             "seconds": round(r["seconds"], 2),
                             "cases_per_min": round(60 * r["cases"] / r["seconds"], 2),
                             "peak_rss_mb": round(r["peak_mb"], 1)})
                log.info("%s", rows[-1])
    cols = list(rows[0])
    text = ",".join(cols) + "\n" + "".join(",".join(str(r[c]) for c in cols) + "\n" for r in rows)
    write_text_atomic(a.out, text)
    source = (f"BraTS: 240x240x155 float32 NIfTI; LIDC: 512x512x{a.slices} int16 DICOM, 0.70 mm "
              "pixels, 2 mm slices")
    print(f"# prepare benchmark ({os.cpu_count()} CPUs visible, {a.threads} threads; {source})")
    print(f"{'dataset':8} {'size':>5} {'cases':>5} {'s':>8} {'cases/min':>10} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['dataset']:8} {r['size']:>5} {r['cases']:>5} {r['seconds']:>8} "
              f"{r['cases_per_min']:>10} {r['peak_rss_mb']:>12}")
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
