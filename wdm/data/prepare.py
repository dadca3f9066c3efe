"""Prepare a named data set into a folder of NIfTI volumes with a checksummed manifest.

Every prepared folder holds ``train/`` and ``test/`` volumes (float32, [0, 1]), ``manifest.csv``
with columns ``file,split,shape,sha256`` (``file`` relative to the folder, ``shape`` like
``32x32x32``) and ``dataset.json`` with the parameters and provenance. Real data sets (``brats``,
``lidc``) add the columns ``case,source,source_sha256`` and an ``excluded.csv`` (``case,source,
reason``) listing every case left out and why; ``strict`` turns any exclusion into an error.

``split`` (real data): ``holdout`` keeps the ``n_test`` seeded cases out of ``train/``; ``upstream``
trains on every case as the WDM authors do, ``test/`` holding copies of ``n_test`` training volumes
(listed twice in the manifest, same sha256; ``dataset.json``: ``"test_in_train": true``).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wdm.data.preprocess import run_parallel
from wdm.io import (
    InputError,
    code_version,
    read_text,
    save_nifti,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)

__all__ = ["DATASETS", "DATASET_RECORD", "EXCLUDED", "MANIFEST", "SOURCE_COLUMNS", "build_real_dataset",
           "split_key", "MANIFEST_COLUMNS", "prepare", "check_out_folder", "read_manifest",
           "verify_manifest", "split_files", "SPLITS"]

log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("phantom-brain", "brats", "lidc")
MANIFEST = "manifest.csv"
#: The parameters and provenance record of a prepared folder (``"test_in_train"`` among them).
DATASET_RECORD = "dataset.json"
MANIFEST_COLUMNS: tuple[str, ...] = ("file", "split", "shape", "sha256")
#: Extra manifest columns of real data sets, after :data:`MANIFEST_COLUMNS`.
SOURCE_COLUMNS: tuple[str, ...] = ("case", "source", "source_sha256")
EXCLUDED = "excluded.csv"
#: Splits of a real data set: ``holdout`` (test cases not trained on) or ``upstream`` (all trained on).
SPLITS: tuple[str, ...] = ("holdout", "upstream")
_SPLIT_NOTES = {"holdout": "test/ holds n_test cases that are not in train/: a held-out comparison",
                "upstream": "as upstream WDM, train/ holds every case and test/ copies of n_test of "
                "them: the reference row and memorisation numbers are not a held-out comparison"}
#: The data sets each per-data-set option applies to.
_OPTION_DATASETS = {"modality": ("brats",), "orientation": ("lidc",), "small_scans": ("lidc",),
                    "spacing_mm": ("lidc",)}


def prepare(dataset: str, out: str | os.PathLike, *, source: str | os.PathLike | None = None,
            size: int = 32, seed: int = 0, n_train: int | None = None, n_test: int = 20,
            overwrite: bool = False, modality: str | None = None, strict: bool = False,
            threads: int = 1, cube: int | None = None, progress: bool = True,
            orientation: str | None = None, small_scans: str | None = None,
            split: str = "holdout", spacing_mm: float | None = None) -> Path:
    """Prepare ``dataset`` at ``size``³ into ``out`` and return ``out``.

    Args:
        dataset: one of :data:`DATASETS`.
        out: the folder to create (refused if it exists and is not empty, unless ``overwrite``).
        source: the raw data folder; must be None for ``phantom-brain`` (built from the MNI152
            template that nilearn ships), required for ``brats`` and ``lidc``.
        size, seed, n_train, n_test: volume side, seed and split sizes. ``phantom-brain``
            generates ``n_train`` (default 40) + ``n_test`` volumes; for real data ``n_test`` cases
            are held out by a seeded split and ``n_train`` caps the training cases (None: all
            the rest).
        overwrite: replace an existing non-empty ``out`` once the new data set is complete
            (``wdm-bench prepare --overwrite`` first checks that ``out`` is an empty or a
            wdm-bench data folder: :func:`check_out_folder`).
        modality: BraTS scan (``t1n`` default; ``t1c``, ``t2w``, ``t2f``); only for ``brats``.
        strict: turn every exclusion of a real case into an error.
        threads: cases processed in parallel (real data sets).
        cube: side of the padded/cropped cube before pooling (None: 256, the paper's; 512 for
            the 512³ configurations; tests use less).
        progress: show a tqdm bar.
        orientation: LIDC 1 mm grid, ``ras`` (default) or ``las`` (upstream's dicom2nifti
            orientation); only for ``lidc`` (:func:`wdm.data.lidc.preprocess_lidc_case`).
        small_scans: LIDC scans smaller than the cube: ``pad`` (default) or ``drop`` (excluded, as
            upstream); only for ``lidc``.
        split: one of :data:`SPLITS` (module docstring); ``phantom-brain`` refuses ``upstream``.
        spacing_mm: LIDC resampling grid in mm (None: 1, the paper's; 0.5 for 512³ LIDC).

    ``out`` may not be the working directory or a parent of it, nor overlap ``source``. A
    failure leaves no hidden working folder beside ``out`` and the old ``out`` as it was.
    """
    if dataset not in DATASETS:
        raise InputError(f"unknown data set {dataset!r}; allowed: {', '.join(DATASETS)}")
    _check_options(dataset, split, modality=modality, orientation=orientation,
                   small_scans=small_scans, spacing_mm=spacing_mm)
    out = Path(out)
    check_out_folder(out, source=None if dataset == "phantom-brain" else source)
    before = _leftovers(out)
    opts = {"modality": modality, "orientation": orientation, "small_scans": small_scans,
            "spacing_mm": spacing_mm}
    try:
        return _prepare(dataset, out, source=source, size=size, seed=seed, n_train=n_train,
                        n_test=n_test, overwrite=overwrite, opts=opts, strict=strict,
                        threads=threads, cube=cube, progress=progress, split=split)
    except BaseException:
        for folder in _leftovers(out) - before:  # an emptied ``.old-`` folder of a failed swap
            with contextlib.suppress(OSError):
                folder.rmdir()  # only ever removes an empty folder
        raise


def _check_options(dataset: str, split: str, **options: object) -> None:
    """Refuse an unknown ``split`` and a per-data-set option given for another data set."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if split != "holdout" and dataset == "phantom-brain":
        raise InputError(f"split {split!r} applies to brats and lidc only (phantom-brain has no "
                         "upstream training set), expected split: holdout")
    for name, val in options.items():
        if val is not None and dataset not in _OPTION_DATASETS[name]:
            raise InputError(f"{name} applies to {' and '.join(_OPTION_DATASETS[name])} only "
                             f"(got {val!r} for {dataset})")


def check_out_folder(out: Path, *, source: str | os.PathLike | None = None,
                     overwrite: bool | None = None) -> None:
    """Refuse an output folder that :func:`prepare` must not create or replace.

    Refused: the working directory or one of its parents, an existing file, and a folder that
    holds or lies inside ``source``. ``overwrite`` (the command line's ``--overwrite``; None:
    not checked here): False refuses any non-empty folder, True one that is not a wdm-bench data
    folder (neither ``dataset.json`` nor ``manifest.csv``), which replacing it would delete.
    """
    target, here = out.resolve(), Path.cwd().resolve()
    if target == here or target in here.parents:
        raise InputError(f"{out}: --out is the working directory or one of its parents, expected a "
                         "folder of its own for the data set (e.g. data/NAME/SIZE)")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder, expected a data folder to create")
    if source is not None:
        src = Path(source).resolve()
        if target == src or src in target.parents or target in src.parents:
            raise InputError(f"{out}: --out and --source {source} overlap, expected a data folder "
                             "outside the raw data (and the raw data outside it)")
    if overwrite is not None and out.is_dir() and any(out.iterdir()):
        is_data = (out / DATASET_RECORD).is_file() or (out / MANIFEST).is_file()
        if not overwrite:
            raise InputError(f"{out}: folder exists and is not empty, expected a new or empty folder"
                             f"{' (pass --overwrite to replace this data set)' if is_data else ''}")
        if not is_data:
            names = sorted(p.name for p in out.iterdir())
            raise InputError(f"{out}: --overwrite replaces only an empty folder or a wdm-bench data "
                             f"folder (with dataset.json or {MANIFEST}); this one holds "
                             f"{', '.join(names[:3])}{', ...' if len(names) > 3 else ''}")


def _leftovers(out: Path) -> set[Path]:
    """The hidden working folders beside ``out`` (``.NAME.tmp-*``, ``.NAME.old-*``)."""
    if not out.parent.is_dir():
        return set()
    return {p for p in out.parent.glob(f".{out.name}.*-*") if p.is_dir()}


def _prepare(dataset: str, out: Path, *, source: str | os.PathLike | None, size: int, seed: int,
             n_train: int | None, n_test: int, overwrite: bool, opts: dict[str, Any],
             strict: bool, threads: int, cube: int | None, progress: bool, split: str) -> Path:
    """:func:`prepare` once ``out`` and ``opts`` (modality, orientation, small_scans) are checked."""
    if dataset == "phantom-brain":
        if source is not None:
            raise InputError("phantom-brain takes no source: it is built from the MNI152 template "
                             f"packaged with nilearn (got source={str(source)!r})")
        from wdm.data.phantom_dataset import make_phantom_dataset

        return make_phantom_dataset(out, size=size, n_train=40 if n_train is None else n_train,
                                    n_test=n_test, seed=seed, overwrite=overwrite)
    if source is None:
        raise InputError(f"{dataset} needs source= (the folder of the raw data set)")
    if dataset == "brats":
        side, cases, fn, params = _brats_job(source, size, cube, opts["modality"])
    elif dataset == "lidc":
        side, cases, fn, params = _lidc_job(source, size, cube, opts["orientation"] or "ras",
                                            opts["small_scans"] or "pad", opts["spacing_mm"] or 1.0)
    else:  # pragma: no cover
        raise AssertionError(f"unhandled data set {dataset!r}")
    return build_real_dataset(dataset, out, cases, fn, source=source, size=size, cube=side,
                              seed=seed, n_train=n_train, n_test=n_test, overwrite=overwrite,
                              strict=strict, threads=threads, params=params, progress=progress,
                              split=split)


_Job = tuple[int, list[tuple[str, Path]], Callable[[Path], Any], dict[str, Any]]


def _brats_job(source: str | os.PathLike, size: int, cube: int | None, modality: str | None) -> _Job:
    """``(cube side, cases, case -> (volume, affine, record), preprocessing record)`` of BraTS."""
    from wdm.data import brats

    mod = modality or "t1n"
    if mod not in brats.MODALITIES:
        raise InputError(f"unknown BraTS modality {mod!r}; allowed: {', '.join(brats.MODALITIES)}")
    side = brats.CUBE if cube is None else int(cube)
    _check_size(size, side)
    cases = brats.find_brats_cases(source)

    def fn(path: Path) -> Any:
        return brats.preprocess_brats_case(path, modality=mod, size=size, cube=side)

    params: dict[str, Any] = {"modality": mod, "clip_percentiles": list(brats.CLIP_PERCENTILES),
                              "pad_value": 0.0, "steps": [
                                  "percentile clip", "min-max [0, 1]", "zero-pad to cube",
                                  "average-pool"]}
    return side, cases, fn, params


def _lidc_job(source: str | os.PathLike, size: int, cube: int | None, orientation: str,
              small_scans: str, spacing: float = 1.0) -> _Job:
    """``(cube side, cases, case -> (volume, affine, record), preprocessing record)`` of LIDC-IDRI."""
    from wdm.data import lidc

    lidc.check_lidc_options(orientation, small_scans)
    side = lidc.CUBE if cube is None else int(cube)
    _check_size(size, side)
    cases = lidc.find_lidc_cases(source)

    def fn(path: Path) -> Any:
        return lidc.preprocess_lidc_case(path, size=size, cube=side, orientation=orientation,
                                         small_scans=small_scans, spacing=spacing)

    params = {"orientation": orientation, "small_scans": small_scans,
              "spacing_mm": spacing, "interpolation": "cubic spline (order 3)",
              "hu_min": lidc.AIR_HU, "clip_percentile": lidc.CLIP_PERCENTILE,
              "pad_value": lidc.AIR_HU, "steps": [
                  "DICOM series -> HU", f"resample {spacing:g} mm isotropic ({orientation.upper()} grid)",
                  "crop/pad to cube" if small_scans == "pad" else "crop to cube, drop smaller scans",
                  "HU < -1000 -> -1000", "clip at percentile", "min-max [0, 1]", "average-pool"]}
    return side, cases, fn, params


def _check_size(size: int, cube: int) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1 or size > cube or cube % size:
        raise InputError(f"size must divide the cube side {cube} (e.g. 128 or 256), got {size!r}")


def split_key(seed: int, case: str) -> str:
    """Sort key of the seeded split: the first ``n_test`` cases by this key are the test set.

    A hash per case (not a permutation of the list), so excluding or adding one case never moves
    another case between train and test.
    """
    return hashlib.sha256(f"{int(seed)}:{case}".encode()).hexdigest()


def _check_real_args(cases: list[tuple[str, Path]], source: str | os.PathLike,
                     n_train: int | None, n_test: int, threads: int, split: str = "holdout") -> None:
    """Refuse bad split sizes or thread counts, too few cases for ``n_test``, an unknown split
    and (``upstream``: the test cases are the first training cases) ``n_train < n_test``."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    for name, val, least in (("n_test", n_test, 1), ("threads", threads, 1)):
        if not isinstance(val, int) or isinstance(val, bool) or val < least:
            raise InputError(f"{name} must be an integer >= {least}, got {val!r}")
    if n_train is not None and (not isinstance(n_train, int) or n_train < 1):
        raise InputError(f"n_train must be null (all) or an integer >= 1, got {n_train!r}")
    if split == "upstream" and n_train is not None and n_train < n_test:
        raise InputError(f"split upstream: n_train={n_train} must be null (all) or >= n_test="
                         f"{n_test}, expected the test cases to be training cases")
    if len(cases) < n_test + 1:
        raise InputError(f"{source}: {len(cases)} case(s) found; n_test={n_test} needs at least "
                         f"{n_test + 1}")


def _split_cases(ordered: list[dict[str, Any]], n_train: int | None, n_test: int, split: str
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """``(train, test, unused cases)`` of the kept cases in seeded order (:func:`split_key`).

    ``test`` = the first ``n_test``; ``train`` = the next ``n_train`` (all when None) for
    ``holdout``, the first ``n_train`` of all (the test cases too) for ``upstream``.
    """
    test = ordered[:n_test]
    pool = ordered[n_test:] if split == "holdout" else ordered
    train = pool if n_train is None else pool[:n_train]
    return train, test, sorted(r["case"] for r in pool[len(train):])


def _case_worker(fn: Callable[[Path], tuple[Any, Any, dict[str, Any]]], staging: Path,
                 strict: bool) -> Callable[[tuple[str, Path]], dict[str, Any]]:
    """The per-case job: run ``fn``, save the volume to ``staging/<case>.nii.gz``, describe it.

    The job returns ``{case, path, record, shape, sha256}``, or ``{case, path, excluded}`` with
    the message of an :class:`InputError` (re-raised, naming the case, with ``strict``).
    """
    def one(case: tuple[str, Path]) -> dict[str, Any]:
        cid, path = case
        try:
            vol, aff, rec = fn(path)
        except InputError as exc:
            if strict:
                raise InputError(f"{exc} [case {cid}; strict: exclusions are errors]") from exc
            log.warning("excluding %s: %s", cid, exc)
            return {"case": cid, "path": path, "excluded": str(exc)}
        dest = staging / f"{cid}.nii.gz"
        save_nifti(dest, vol, aff)
        return {"case": cid, "path": path, "record": rec, "shape": "x".join(map(str, vol.shape)),
                "sha256": sha256_file(dest)}

    return one


def _move_into_splits(tmp: Path, staging: Path, source: Path,
                      splits: tuple[tuple[str, list[dict[str, Any]]], ...]) -> list[list[str]]:
    """Move each staged volume into ``tmp/<split>/``; the manifest rows, cases sorted per split.

    A case in both splits (``upstream``) is copied into the first: two files, one sha256.
    """
    uses = Counter(r["case"] for _, group in splits for r in group)
    rows = []
    for split, group in splits:
        (tmp / split).mkdir()
        for r in sorted(group, key=lambda r: r["case"]):
            rel = f"{split}/{r['case']}.nii.gz"
            uses[r["case"]] -= 1
            (shutil.copyfile if uses[r["case"]] else os.replace)(staging / f"{r['case']}.nii.gz", tmp / rel)
            rows.append([rel, split, r["shape"], r["sha256"], r["case"],
                         _rel(Path(r["record"]["source"]), source), r["record"]["source_sha256"]])
    return rows


def _real_dataset_record(dataset: str, source: Path, n_found: int, kept: list[dict[str, Any]],
                         excluded: list[dict[str, Any]], train: list[dict[str, Any]],
                         test: list[dict[str, Any]], unused: list[str], *, size: int, cube: int,
                         seed: int, strict: bool, params: dict[str, Any], split: str
                         ) -> dict[str, Any]:
    """The ``dataset.json`` of a real data set: parameters, split, per-case records, code version."""
    return {
        "name": dataset,
        "size": size,
        "shape": [size] * 3,
        "cube": cube,
        "value_range": [0.0, 1.0],
        "source": str(source.resolve()),
        "n_found": n_found,
        "n_excluded": len(excluded),
        "n_train": len(train),
        "n_test": len(test),
        "n_unused": len(unused),
        "seed": int(seed),
        "split": split,
        "test_in_train": split == "upstream",
        "split_note": _SPLIT_NOTES[split],
        "split_rule": "cases sorted by sha256(f'{seed}:{case}'); the first n_test are the test set, "
                      + ("the next n_train (all when null) the training set" if split == "holdout"
                         else "the first n_train (all when null) the training set"),
        "test_cases": sorted(r["case"] for r in test),
        "unused_cases": unused,
        "padded_cases": sorted(r["case"] for r in kept if r["record"].get("padded")),
        "cropped_cases": sorted(r["case"] for r in kept if r["record"].get("cropped")),
        "strict": bool(strict),
        "preprocessing": params,
        "cases": {r["case"]: r["record"] for r in kept},
        "code_version": code_version(),
    }


def build_real_dataset(dataset: str, out: str | os.PathLike, cases: list[tuple[str, Path]],
                       fn: Callable[[Path], tuple[Any, Any, dict[str, Any]]], *,
                       source: str | os.PathLike, size: int, cube: int, seed: int,
                       n_train: int | None, n_test: int, overwrite: bool, strict: bool,
                       threads: int, params: dict[str, Any], progress: bool = True,
                       split: str = "holdout") -> Path:
    """Run ``fn`` (one case -> volume, affine, record) over ``cases`` and write the data folder.

    Each case is processed in a thread pool and written at once to a staging folder inside a
    hidden sibling of ``out``; a case whose ``fn`` raises :class:`InputError` is excluded (listed
    in ``excluded.csv`` with the message) or, with ``strict``, aborts the whole run. Then the
    seeded split (:func:`split_key`; ``split``: one of :data:`SPLITS`) moves the volumes into
    ``train/`` and ``test/`` (:func:`_split_cases`), the
    manifest and ``dataset.json`` are written, and the folder is renamed onto ``out``. On any
    error the sibling is removed: nothing half-written is left.
    """
    from wdm.data.phantom_dataset import _check_out, _swap_into_place

    _check_real_args(cases, source, n_train, n_test, threads, split)
    out = Path(out)
    source = Path(source)
    _check_out(out, overwrite)
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    staging = tmp / "staging"
    staging.mkdir()
    try:
        results = run_parallel(_case_worker(fn, staging, strict), cases, threads=threads,
                               desc=f"{dataset} {size}³", progress=progress)
        excluded = [r for r in results if "excluded" in r]
        kept = [r for r in results if "excluded" not in r]
        if len(kept) < n_test + 1:
            raise InputError(f"{source}: only {len(kept)} of {len(cases)} case(s) usable "
                             f"({len(excluded)} excluded); n_test={n_test} needs at least {n_test + 1}")
        ordered = sorted(kept, key=lambda r: split_key(seed, r["case"]))
        train, test, unused = _split_cases(ordered, n_train, n_test, split)
        rows = _move_into_splits(tmp, staging, source, (("train", train), ("test", test)))
        shutil.rmtree(staging)
        _write_csv(tmp / MANIFEST, MANIFEST_COLUMNS + SOURCE_COLUMNS, rows)
        _write_csv(tmp / EXCLUDED, ("case", "source", "reason"),
                   [[r["case"], _rel(r["path"], source), r["excluded"]] for r in excluded])
        write_json_atomic(tmp / DATASET_RECORD, _real_dataset_record(
            dataset, source, len(cases), kept, excluded, train, test, unused, size=size, cube=cube,
            seed=seed, strict=strict, params=params, split=split))
        _swap_into_place(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s: %d train + %d test volumes of %d³ (split %s) from %d case(s), %d excluded "
             "(%s) in %.1f s", out, len(train), len(test), size, split, len(cases), len(excluded),
             EXCLUDED, time.perf_counter() - t0)
    return out


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _write_csv(path: Path, header: tuple[str, ...], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def read_manifest(data_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of ``data_dir/manifest.csv`` as dicts, in order.

    The first columns must be :data:`MANIFEST_COLUMNS` (all non-empty); extra columns (real data
    sets add :data:`SOURCE_COLUMNS`) are kept in the dicts.
    """
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise InputError(f"{data_dir}: no {MANIFEST} (not a prepared data folder?)")
    text = read_text(path, f"{MANIFEST} written by 'wdm-bench prepare'")
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        fields = tuple(reader.fieldnames or ())
        if fields[: len(MANIFEST_COLUMNS)] != MANIFEST_COLUMNS:
            raise InputError(f"{path}: expected columns {','.join(MANIFEST_COLUMNS)}, "
                             f"got {','.join(reader.fieldnames or ())}")
        rows = []
        for line, row in enumerate(reader, start=2):
            if any(not row.get(col) for col in MANIFEST_COLUMNS):
                raise InputError(f"{path}:{line}: empty field in {row}")
            rows.append({col: row[col] or "" for col in fields})
    if not rows:
        raise InputError(f"{path}: the manifest lists no files")
    return rows


def verify_manifest(data_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Check that every file in the manifest exists and matches its sha256; return the rows.

    Raises :class:`InputError` naming the first missing or modified file.
    """
    data_dir = Path(data_dir)
    rows = read_manifest(data_dir)
    for row in rows:
        path = data_dir / row["file"]
        if not path.is_file():
            raise InputError(f"{path}: listed in {MANIFEST} but missing")
        digest = sha256_file(path)
        if digest != row["sha256"]:
            raise InputError(f"{path}: sha256 {digest} does not match {MANIFEST} "
                             f"({row['sha256']}); the file was modified or corrupted")
    return rows


def split_files(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """Paths of the files of one split (``train`` / ``test``), in manifest order."""
    data_dir = Path(data_dir)
    rows = read_manifest(data_dir)
    files = [data_dir / r["file"] for r in rows if r["split"] == split]
    if not files:
        splits = sorted({r["split"] for r in rows})
        raise InputError(f"{data_dir}: split {split!r} is empty; the manifest has {splits}")
    return files
