"""The released MedicalNet checkpoints: their table, integrity check, reading and lookup.

Reference: Chen, Ma & Zheng, "Med3D: Transfer Learning for 3D Medical Image Analysis",
arXiv 1904.00625 (Tencent MedicalNet). A weights *spec* (a file, a released name, ``hub:NAME``,
``auto:NAME``, ``none`` or ``phantom-seg:PATH``) resolves to a checkpoint file and the label the
tables print (:func:`resolve_weights`); :func:`load_medicalnet_state_dict` reads a released file
into the state dict of :class:`eval.features.MedicalNetResNet`. Files not written by this run are
read with ``torch.load(weights_only=True)`` after their SHA-256 is checked; a download lands in the
torch hub cache only after that check.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from wdm.io import InputError, sha256_file

__all__ = [
    "MEDICALNET_WEIGHTS",
    "PHANTOM_SEG",
    "PHANTOM_SEG_LABEL",
    "load_medicalnet_state_dict",
    "read_medicalnet_checkpoint",
    "local_weights",
    "resolve_weights",
]

logger = logging.getLogger(__name__)

PHANTOM_SEG = "phantom-seg"
PHANTOM_SEG_LABEL = "phantom-seg-resnet10 (trained on phantom-brain, NOT MedicalNet)"

_HF = "https://huggingface.co/TencentMedicalNet/MedicalNet-Resnet{depth}/resolve/main/{file}"


def _entry(depth: int, datasets: int, sha256: str | None) -> dict:
    stem = f"resnet_{depth}" + ("_23dataset" if datasets == 23 else "")
    return {
        "depth": depth,
        "datasets": datasets,
        "file": stem + ".pth",
        "shortcut": "A" if depth in (18, 34) else "B",
        "sha256": sha256,
        "url": _HF.format(depth=depth, file=stem + ".pth"),
    }


#: Released MedicalNet checkpoints keyed by file stem. "datasets" is 23 for ``*_23dataset.pth`` and
#: 8 for the original release. SHA-256 values are those of the files the MedicalNet authors
#: published (None: unknown, the check is skipped with a warning). The Hugging Face repositories
#: ``TencentMedicalNet/MedicalNet-Resnet{10,18,34,50}`` were confirmed from public code that
#: downloads these exact files; the 101/152/200 URLs follow the same pattern, unconfirmed.
MEDICALNET_WEIGHTS: dict[str, dict] = {
    "resnet_10": _entry(10, 8, None),
    "resnet_10_23dataset": _entry(
        10, 23, "afa8055f3e47f4a18239495d92a7abc587902c69c31c743de2b2784653b72605"),
    "resnet_18": _entry(18, 8, None),
    "resnet_18_23dataset": _entry(18, 23, None),
    "resnet_34": _entry(34, 8, None),
    "resnet_34_23dataset": _entry(34, 23, None),
    "resnet_50": _entry(50, 8, "5b6189cafbee2f5604a7279b62bc163365aa6a86a377e1dc260a14275cacbd84"),
    "resnet_50_23dataset": _entry(
        50, 23, "ff48a62219073fb977fd3f4ddfb8dc1367f0ec156c8d6f6c37e205bd683a246e"),
    "resnet_101": _entry(101, 8, None),
    "resnet_152": _entry(152, 8, None),
    "resnet_200": _entry(200, 8, None),
}


# ----------------------------------------------------------------------------- reading
def _verify_sha256(path: Path, expected: str | None) -> str:
    actual = sha256_file(path)
    if expected is None:
        logger.warning("%s: no known SHA-256 for this checkpoint; integrity NOT verified "
                       "(sha256 %s)", path, actual)
    elif actual.lower() != expected.lower():
        raise InputError(f"{path}: SHA-256 mismatch: expected {expected.lower()}, got {actual}; "
                         "the file was not used")
    return actual


def load_medicalnet_state_dict(path: str | os.PathLike, *,
                               expected_sha256: str | None) -> dict[str, torch.Tensor]:
    """Read a MedicalNet checkpoint into a plain state dict ready for :class:`MedicalNetResNet`.

    Accepts the released format ``{'state_dict': {'module.conv1.weight': ...}}`` (a bare state dict
    is accepted too); the ``module.`` prefix (DataParallel) is stripped and the segmentation head
    (``conv_seg.*``) dropped. Loaded with ``torch.load(weights_only=True)``. With
    ``expected_sha256`` the file's hash is checked first; a mismatch raises :class:`InputError`
    naming the file and both hashes.
    """
    return read_medicalnet_checkpoint(path, expected_sha256=expected_sha256)[0]


def read_medicalnet_checkpoint(path: str | os.PathLike, *, expected_sha256: str | None
                               ) -> tuple[dict[str, torch.Tensor], str]:
    """:func:`load_medicalnet_state_dict` and the file's SHA-256, hashed once for both."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    sha256 = _verify_sha256(path, expected_sha256)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise InputError(f"{path}: cannot read checkpoint with weights_only=True "
                         f"({type(exc).__name__}: {exc})") from exc
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"{path}: not a MedicalNet checkpoint (expected {{'state_dict': "
                         "{name: tensor}}})")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        key = key.removeprefix("module.")
        if not key.startswith("conv_seg."):
            out[key] = value
    return out, sha256


# ------------------------------------------------------------------------------ lookup
def _manifest_label(name: str) -> str:
    e = MEDICALNET_WEIGHTS[name]
    return f"medicalnet-resnet{e['depth']}-{e['datasets']}datasets"


def _local_candidates(name: str) -> list[Path]:
    file = MEDICALNET_WEIGHTS[name]["file"]
    out = []
    if os.environ.get("WDM_MEDICALNET_DIR"):
        out.append(Path(os.environ["WDM_MEDICALNET_DIR"]) / file)
    out.append(Path(torch.hub.get_dir()) / "checkpoints" / file)
    return out


def local_weights(name: str) -> Path | None:
    """The local file of manifest checkpoint ``name`` (``$WDM_MEDICALNET_DIR``, then the torch hub
    cache), or None when neither holds it."""
    _check_name(name)
    return next((c for c in _local_candidates(name) if c.is_file()), None)


def _check_name(name: str) -> None:
    if name not in MEDICALNET_WEIGHTS:
        raise InputError(f"unknown MedicalNet weights {name!r}; allowed: "
                         f"{sorted(MEDICALNET_WEIGHTS)}, a file path, 'none', 'auto:<name>', "
                         "'hub:<name>' or 'phantom-seg:<path>'")


def _download(name: str) -> Path:
    """Fetch a manifest checkpoint with ``torch.hub.load_state_dict_from_url`` into the hub cache.

    The file lands in a staging folder first; only after its SHA-256 matches the manifest (and it
    loads with ``weights_only=True``) is it renamed into the cache, so a bad download is never used.
    """
    entry = MEDICALNET_WEIGHTS[name]
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    dst = cache / entry["file"]
    if dst.is_file():
        return dst
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    logger.info("downloading %s to %s", entry["url"], dst)
    try:
        load_error: Exception | None = None
        try:
            torch.hub.load_state_dict_from_url(entry["url"], model_dir=str(staging),
                                               map_location="cpu", progress=True, check_hash=False,
                                               file_name=entry["file"], weights_only=True)
        except Exception as exc:  # unreadable download: report after the hash check
            load_error = exc
        got = staging / entry["file"]
        if not got.is_file():
            raise InputError(f"download of {entry['url']} failed ({load_error})")
        _verify_sha256(got, entry["sha256"])
        if load_error is not None:
            raise InputError(f"{entry['url']}: downloaded file is not a readable checkpoint "
                             f"({type(load_error).__name__}: {load_error})")
        os.replace(got, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dst


def resolve_weights(spec: str | os.PathLike | None, *, depth: int = 50,
                    seed: int = 0) -> tuple[Path | None, str]:
    """Resolve a weights spec to ``(checkpoint path or None, human label for tables)``.

    - ``None`` / ``"none"``: untrained network, label ``untrained-resnet{depth}-seed{seed}
      (NOT MedicalNet)``;
    - an existing file: that file (label from the manifest when its name is a known checkpoint);
    - a manifest name (``resnet_50_23dataset``): ``$WDM_MEDICALNET_DIR/<file>``, then
      ``torch.hub.get_dir()/checkpoints/<file>``; :class:`InputError` if neither exists;
    - ``"hub:<name>"``: the local lookups, else download from the Hugging Face hub into the torch
      hub cache (SHA-256 checked before it lands there);
    - ``"auto:<name>"``: the local lookups, else the untrained network with a warning that the
      resulting FID is NOT a MedicalNet FID;
    - ``"phantom-seg:<path>"``: that file, label :data:`PHANTOM_SEG_LABEL` (its content is checked
      when :mod:`eval.extractors` loads it).
    ``depth`` and ``seed`` only shape the untrained label.
    """
    untrained = (None, f"untrained-resnet{depth}-seed{seed} (NOT MedicalNet)")
    if spec is None or str(spec).lower() == "none":
        return untrained
    s = str(spec)
    if s.startswith(PHANTOM_SEG + ":"):
        path = Path(s.partition(":")[2])
        if not path.is_file():
            raise InputError(f"{path}: phantom-seg weights {'is a folder' if path.is_dir() else 'not found'}"
                             ", expected a checkpoint written by 'wdm-bench train-extractor'")
        return path, PHANTOM_SEG_LABEL
    mode, _, name = s.partition(":") if s.startswith(("auto:", "hub:")) else ("", "", s)
    if not mode and Path(s).is_file():
        stem = Path(s).name.removesuffix(".pth")
        known = stem in MEDICALNET_WEIGHTS
        label = _manifest_label(stem) if known else f"resnet{depth}-file:{stem}"
        return Path(s), label
    if not mode and (Path(s).is_dir() or "/" in s or s.endswith((".pth", ".pt"))):
        what = "is a folder" if Path(s).is_dir() else "file not found"
        raise InputError(f"{s}: weights {what}, expected a MedicalNet checkpoint file (.pth), a "
                         "name such as resnet_50_23dataset, hub:NAME, auto:NAME or none")
    found = local_weights(name)
    if found is not None:
        return found, _manifest_label(name)
    if mode == "hub":
        return _download(name), _manifest_label(name)
    if mode == "auto":
        logger.warning("MedicalNet weights %r not found (looked in %s); using an UNTRAINED "
                       "resnet%d: the FID is NOT a MedicalNet FID", name,
                       ", ".join(map(str, _local_candidates(name))), depth)
        return untrained
    raise InputError(f"MedicalNet weights {name!r} not found; looked in "
                     f"{', '.join(map(str, _local_candidates(name)))} (set WDM_MEDICALNET_DIR, "
                     f"or use 'hub:{name}' to download from {MEDICALNET_WEIGHTS[name]['url']})")
