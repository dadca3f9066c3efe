"""config/paper/: every file validates, lists the four models, and builds at the paper resolution.

Networks are built on the ``meta`` device (shapes only, no memory, no 128^3 forward pass) to check
that each run config fits its resolution and to pin the parameter counts (WDM 128^3: ~57.9M, the
size of the authors' released ``brats_unet_128_1200k.pt``, 231.8 MB of float32).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from baselines.ldm.config import stage_config
from wdm.config import load_run_config, load_workflow_config
from wdm.diffusion import GaussianDiffusion
from wdm.model import build_model

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper"
WORKFLOW_CONFIGS = sorted(p for p in PAPER.glob("*.yaml") if not p.stem.endswith("_512"))
#: Beyond the paper: WDM alone at 512^3 with two wavelet levels.
CONFIGS_512 = sorted(PAPER.glob("*_512.yaml"))
MODELS = ("wdm", "ddpm3d", "hagan", "ldm")


@contextlib.contextmanager
def _meta_models(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Build networks on the meta device; noise schedules (checked with .item()) stay on the CPU."""
    build = GaussianDiffusion.from_config.__func__

    def on_cpu(cls, cfg):  # noqa: ANN001, ANN202
        with torch.device("cpu"):
            return build(cls, cfg)

    monkeypatch.setattr(GaussianDiffusion, "from_config", classmethod(on_cpu))
    with torch.device("meta"):
        yield


def _n_params(model) -> dict[str, int]:  # noqa: ANN001
    return {k: sum(p.numel() for p in m.parameters()) for k, m in model.modules().items()}


def test_there_are_four_workflow_configs():
    assert [p.stem for p in WORKFLOW_CONFIGS] == ["brats_128", "brats_256", "lidc_128", "lidc_256"]
    assert [p.stem for p in CONFIGS_512] == ["brats_512", "lidc_512"]


@pytest.mark.parametrize("path", CONFIGS_512, ids=lambda p: p.stem)
def test_512_configs_run_wdm_with_two_levels(path: Path, monkeypatch: pytest.MonkeyPatch):
    """512^3: LIDC resampled to 0.5 mm (a 256 mm field), BraTS padded into a 512 cube; WDM with
    two packet levels, i.e. 64 channels on the 128^3 grid of the 256^3 model."""
    wf = load_workflow_config(path)
    (dataset,) = wf["datasets"].values()
    assert dataset["resolutions"] == [512] and dataset["cube"] == 512
    assert dataset["spacing_mm"] == (0.5 if dataset["kind"] == "lidc" else None)
    assert wf["models"] == ["wdm"] and wf["model_configs"]["wdm"] == "config/paper/models/wdm_512.yaml"
    cfg = load_run_config(REPO / wf["model_configs"]["wdm"])
    assert (cfg["diffusion"]["levels"], cfg["network"]["preset"]) == (2, "wdm-512")
    with _meta_models(monkeypatch):
        model = build_model(cfg, (512, 512, 512))
    assert tuple(model.state_shape) == (64, 128, 128, 128)


@pytest.mark.parametrize("path", WORKFLOW_CONFIGS, ids=lambda p: p.stem)
def test_workflow_config_lists_every_model_with_its_paper_run_config(path: Path):
    wf = load_workflow_config(path)
    res = int(path.stem.split("_")[1])
    (dataset,) = wf["datasets"].values()
    assert dataset["resolutions"] == [res]
    assert wf["models"] == list(MODELS)
    assert wf["evaluation"]["n_samples"] == 1000 and wf["evaluation"]["kernel_size"] == 7
    for model in MODELS:
        rel = wf["model_configs"][model]
        assert rel == f"config/paper/models/{model}_{res}.yaml"
        cfg = load_run_config(REPO / rel)
        assert cfg["model"] == model


@pytest.mark.parametrize("path", WORKFLOW_CONFIGS, ids=lambda p: p.stem)
def test_paper_data_configs_follow_upstream(path: Path):
    """Upstream WDM trains on every case (pfriedri/wdm-3d); its LIDC script keeps dicom2nifti's
    LAS array and drops scans smaller than 256 mm. The schema defaults stay ours."""
    (dataset,) = load_workflow_config(path)["datasets"].values()
    assert dataset["split"] == "upstream"
    assert dataset["n_train"] is None  # every case: the test cases are trained on too
    if dataset["kind"] == "lidc":
        assert (dataset["orientation"], dataset["small_scans"]) == ("las", "drop")
    text = path.read_text()
    assert "split: upstream    # as pfriedri/wdm-3d" in text


def test_schema_defaults_are_ours():
    (dataset,) = load_workflow_config(REPO / "config" / "config.yaml")["datasets"].values()
    assert (dataset["split"], dataset["orientation"], dataset["small_scans"]) == ("holdout", "ras", "pad")


@pytest.mark.parametrize("res", [128, 256])
def test_paper_hyperparameters(res: int):
    run = {m: load_run_config(PAPER / "models" / f"{m}_{res}.yaml") for m in MODELS}
    wdm, ddpm, hagan, ldm = (run[m] for m in MODELS)
    for cfg in (wdm, ddpm):  # 3D DDPM: the same U-Net and hyperparameters as WDM
        assert cfg["network"]["preset"] == f"wdm-{res}"
        assert cfg["training"]["lr"] == 1e-5 and cfg["training"]["weight_decay"] == 0.0
        assert cfg["training"]["steps"] == 1_200_000
        assert cfg["training"]["batch_size"] == (10 if res == 128 else 1)
        assert (cfg["sampling"]["sampler"], cfg["sampling"]["steps"]) == ("ddpm", 1000)
        d = cfg["diffusion"]
        assert (d["schedule"], d["timesteps"], d["beta_start"], d["beta_end"]) == ("linear", 1000, 1e-4, 0.02)
    assert wdm["diffusion"]["lll_scale"] == 3.0
    h = hagan["hagan"]
    assert h["preset"] == f"hagan-{res}"
    assert (h["lr_g"], h["lr_d"], h["lr_e"], h["betas"]) == (1e-4, 4e-4, 1e-4, [0.0, 0.999])
    assert (hagan["training"]["batch_size"], hagan["training"]["steps"]) == (4, 80_000)
    v = ldm["ldm"]["vqgan"]
    # medicaldiffusion's effective VQ-GAN lr: 3e-4 x (1 GPU / 8) x (batch 2 / 4), gradient clip 1
    assert v["preset"] == f"paper-{res}" and v["lr"] == 1.875e-5 and v["batch_size"] == 2
    assert (v["grad_clip"], v["ema"], v["disc_start"]) == (1.0, None, 10_000)
    d = ldm["diffusion"]
    assert (d["schedule"], d["timesteps"], d["max_beta"]) == ("cosine", 300, 0.9999)
    assert (d["prediction"], d["loss"], d["variance"]) == ("eps", "l1", "fixed_small")
    t = ldm["training"]
    assert (t["ema"], t["ema_every"], t["ema_start"]) == (0.995, 10, 2000)
    assert t["lr"] == 1e-4 and t["steps"] == 700_000
    assert stage_config(ldm, "vqgan")["training"]["grad_clip"] == 1.0


@pytest.mark.parametrize("res", [128, 256])
@pytest.mark.parametrize("model", MODELS)
def test_model_builds_at_paper_resolution(model: str, res: int, monkeypatch: pytest.MonkeyPatch):
    cfg = load_run_config(PAPER / "models" / f"{model}_{res}.yaml")
    shape = (res, res, res)
    if model == "ldm":
        cfg["ldm"]["vqgan"]["perceptual_weights"] = None  # no download to build the shapes
        stages = [stage_config(cfg, "vqgan"), stage_config(cfg, "diffusion", "/no/such/vqgan/run")]
    else:
        stages = [cfg]
    with _meta_models(monkeypatch):
        built = [build_model(stage, shape) for stage in stages]
    counts = [_n_params(b) for b in built]
    if model == "wdm":
        n = counts[0]["network"]
        assert abs(n - 57.9e6) < 0.1e6 if res == 128 else 80e6 < n < 90e6, n
    elif model == "ddpm3d":  # WDM's U-Net with 1 instead of 8 input/output channels
        wdm = load_run_config(PAPER / "models" / f"wdm_{res}.yaml")
        with _meta_models(monkeypatch):
            n_wdm = _n_params(build_model(wdm, shape))["network"]
        assert 0 < n_wdm - counts[0]["network"] < 30_000
    elif model == "hagan":
        assert set(counts[0]) == {"generator", "discriminator", "encoder", "sub_encoder"}
        assert 40e6 < counts[0]["generator"] < 70e6, counts
    else:  # VQ-GAN down-sampling 4 (128^3) or 8 (256^3): the U-Net runs on 32^3 x 8 latents
        assert tuple(built[1].latent_shape) == (8, 32, 32, 32)
        assert counts[1]["network"] == pytest.approx(57.9e6, abs=0.1e6)


@pytest.mark.parametrize("res, n_params", [(128, 89_706_056), (256, 125_499_720)])
def test_wavunet_paper_configs_build_the_papers_variant(res: int, n_params: int,
                                                         monkeypatch: pytest.MonkeyPatch):
    """"WDM WavU-Net": the paper's WDM setting with upstream's WavUNetModel (its parameter count,
    checked by hand in tests/test_wavunet.py)."""
    cfg = load_run_config(PAPER / "models" / f"wdm_wavunet_{res}.yaml")
    plain = load_run_config(PAPER / "models" / f"wdm_{res}.yaml")
    assert cfg["network"]["preset"] == f"wdm-{res}-wavunet"
    same = {k: v for k, v in plain.items() if k != "network"}
    assert {k: v for k, v in cfg.items() if k != "network"} == same
    with _meta_models(monkeypatch):
        model = build_model(cfg, (res,) * 3)
    assert _n_params(model)["network"] == n_params
