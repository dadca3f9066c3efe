"""The 3D latent diffusion baseline (baselines/ldm): VQ-GAN parts, both stages, CLI and DAG."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from baselines.ldm import LatentDiffusionStage, VQGANStage
from baselines.ldm.config import stage_config
from baselines.ldm.vqgan import VectorQuantizerEMA
from wdm.config import resolve_run_config
from wdm.io import InputError
from wdm.model import build_model

REPO = Path(__file__).resolve().parents[1]

#: A 16^3 ldm config: tiny VQ-GAN (16^3 -> 4^3 x 4 latents), tiny U-Net, 2 steps per stage.
TINY_LDM = {
    "model": "ldm",
    "ldm": {"vqgan": {"preset": "tiny", "steps": 2, "batch_size": 2, "disc_start": 1,
                      "perceptual_weights": None}},
    "network": {"preset": "tiny"},
    "diffusion": {"schedule": "cosine", "timesteps": 300},
    "training": {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "log_every": 1,
                 "device": "cpu"},
    "sampling": {"sampler": "ddim", "steps": 3, "batch_size": 1, "device": "cpu"},
}


def _quantizer(decay: float = 0.5, threshold: float = 1.0) -> VectorQuantizerEMA:
    """Two 1-d codes at 0 and 10, counts 1, already initialised."""
    q = VectorQuantizerEMA(2, 1, decay=decay, beta=0.25, restart_threshold=threshold)
    q.embeddings.copy_(torch.tensor([[0.0], [10.0]]))
    q.embed_sum.copy_(q.embeddings)
    q.cluster_size.fill_(1.0)
    q.initialised.fill_(True)
    return q


def test_ema_update_and_dead_code_restart_by_hand():
    q = _quantizer()
    z = torch.tensor([1.0, 1.0, 3.0, 3.0]).view(1, 1, 4, 1, 1)  # all nearest to code 0
    idx = q.codes(z)
    assert idx.flatten().tolist() == [0, 0, 0, 0]
    g = torch.Generator().manual_seed(0)
    restarted = q.ema_update(z, idx, g)
    # N = 0.5 * [1, 1] + 0.5 * [4, 0] = [2.5, 0.5]; S = 0.5 * [0, 10] + 0.5 * [8, 0] = [4, 5]
    assert restarted == 1  # code 1's count 0.5 < 1: dead
    assert q.embeddings[0, 0].item() == pytest.approx(4.0 / 2.5, rel=1e-4)
    assert q.embeddings[1, 0].item() in (1.0, 3.0)  # re-seeded with an encoder output
    assert q.embed_sum[1, 0].item() == q.embeddings[1, 0].item() and q.cluster_size[1].item() == 1.0
    assert q.cluster_size[0].item() == pytest.approx(2.5)
    # The restart draw comes from the generator: same seed, same code.
    q2 = _quantizer()
    q2.ema_update(z, idx, torch.Generator().manual_seed(0))
    assert torch.equal(q.embeddings, q2.embeddings)


def test_ema_update_without_restarts_keeps_unused_code():
    q = _quantizer(threshold=0.0)
    z = torch.tensor([1.0, 1.0, 3.0, 3.0]).view(1, 1, 4, 1, 1)
    assert q.ema_update(z, q.codes(z)) == 0
    assert q.embeddings[1, 0].item() == pytest.approx(5.0 / 0.5, rel=1e-4)  # S / N unchanged: 10


def test_quantizer_forward_init_commitment_and_straight_through():
    q = VectorQuantizerEMA(4, 2, beta=0.25).train()
    z = torch.randn(2, 2, 3, 3, 3, requires_grad=True)
    z_st, info = q(z, torch.Generator().manual_seed(1))
    assert bool(q.initialised)
    assert info["indices"].shape == (2, 3, 3, 3)
    z_q = z_st.detach()
    assert info["commitment"].item() == pytest.approx(0.25 * torch.mean((z.detach() - z_q) ** 2).item(),
                                                      rel=1e-5)
    z_st.sum().backward()  # straight-through: d(z_st)/dz = identity
    assert torch.allclose(z.grad, torch.ones_like(z))


def test_quantizer_first_call_seeds_codes_from_encoder_outputs():
    q = VectorQuantizerEMA(3, 2, decay=0.99, restart_threshold=0.0).train()
    z = torch.randn(1, 2, 2, 2, 2)
    q(z, torch.Generator().manual_seed(0))
    flat = z.movedim(1, -1).reshape(-1, 2)
    # After init each code is an encoder output; one EMA step (decay 0.99) moves it by a few %.
    for code in q.embeddings:
        assert torch.cdist(code[None], flat).min() < 0.1 * flat.norm(dim=1).max()


def test_quantizer_eval_mode_leaves_codebook_alone():
    q = _quantizer().eval()
    before = q.embeddings.clone()
    q(torch.tensor([1.0, 3.0]).view(1, 1, 2, 1, 1))
    assert torch.equal(q.embeddings, before)


def test_schema_defaults_and_errors():
    cfg = resolve_run_config({"model": "ldm"})
    assert cfg["ldm"]["stage"] == "diffusion" and cfg["ldm"]["vqgan"]["preset"] == "small"
    assert cfg["ldm"]["vqgan"]["perceptual_weights"] == "auto:resnet_10_23dataset"
    with pytest.raises(InputError, match="ldm.stage"):
        resolve_run_config({"model": "ldm", "ldm": {"stage": "both"}})
    with pytest.raises(InputError, match="ldm.vqgan.preset"):
        resolve_run_config({"model": "ldm", "ldm": {"vqgan": {"preset": "huge"}}})
    with pytest.raises(InputError, match="vqgan"):
        resolve_run_config({"model": "ldm", "ldm": {"vqgan": {"codes": 4}}})
    with pytest.raises(InputError, match="vqgan_run"):
        stage_config({"model": "ldm"}, "diffusion")
    paper = stage_config({"model": "ldm", "ldm": {"vqgan": {"preset": "paper-128"}}}, "vqgan")
    model = build_model(paper, (64, 64, 64))
    assert isinstance(model, VQGANStage)
    assert model.settings["n_codes"] == 16384 and model.latent_shape == (8, 16, 16, 16)


def test_default_config_is_valid():
    cfg = yaml.safe_load((REPO / "config" / "models" / "ldm.yaml").read_text())
    s1 = stage_config(cfg, "vqgan")
    assert s1["training"]["steps"] == cfg["ldm"]["vqgan"]["steps"]
    s2 = stage_config(cfg, "diffusion", "somewhere")
    assert s2["diffusion"]["schedule"] == "cosine" and s2["diffusion"]["timesteps"] == 300
    assert s2["ldm"]["vqgan_run"] == "somewhere"


def test_stage2_refuses_wavelet_levels():
    """diffusion.levels is WDM's; the latent diffusion stage refuses 2 instead of ignoring it."""
    cfg = stage_config({**TINY_LDM, "diffusion": {**TINY_LDM["diffusion"], "levels": 2}}, "diffusion",
                       "no-such-run")
    with pytest.raises(InputError, match=r"diffusion.levels: 2 is for model wdm.*'ldm'"):
        build_model(cfg, (16, 16, 16))


def _blobs(n: int = 2, size: int = 16) -> torch.Tensor:
    """(n, 1, s, s, s) smooth blobs in [-1, 1]: a trivially learnable data set."""
    ax = torch.linspace(-1, 1, size)
    zz, yy, xx = torch.meshgrid(ax, ax, ax, indexing="ij")
    vols = [torch.exp(-((xx - c) ** 2 + yy ** 2 + zz ** 2) / 0.3) * 2 - 1 for c in (-0.3, 0.3)[:n]]
    return torch.stack(vols).unsqueeze(1)


def test_vqgan_reconstruction_loss_decreases():
    torch.manual_seed(0)
    cfg = stage_config({**TINY_LDM, "ldm": {"vqgan": {**TINY_LDM["ldm"]["vqgan"], "disc_start": 1000,
                                                      "lr": 0.002}}}, "vqgan")
    model = build_model(cfg, (16, 16, 16))
    opts = model.configure_optimizers(cfg["training"])
    gen = torch.Generator().manual_seed(0)
    x = _blobs()
    rec = [model.training_step(x, gen, opts, step)["rec_l1"].item() for step in range(12)]
    assert sum(rec[-3:]) / 3 < 0.6 * sum(rec[:3]) / 3, rec


def test_perceptual_term_on_with_weights(tmp_path):
    from eval.features import medicalnet_resnet

    weights = tmp_path / "my_resnet10.pth"
    torch.save({"state_dict": medicalnet_resnet(10).state_dict()}, weights)
    cfg = stage_config({**TINY_LDM, "ldm": {"vqgan": {**TINY_LDM["ldm"]["vqgan"],
                                                      "perceptual_weights": str(weights)}}}, "vqgan")
    model = build_model(cfg, (16, 16, 16))
    assert model.perceptual is not None and model.run_info()["perceptual"].startswith("on")
    out = model.training_step(_blobs(), torch.Generator().manual_seed(0),
                              model.configure_optimizers(cfg["training"]), 0)
    assert out["perceptual_on"].item() == 1.0 and out["perceptual"].item() > 0


def test_stage1_resume_is_bit_identical(phantom16, tmp_path):
    """Stopped after step 1 (before the discriminators start) and resumed: the same weights and
    losses as 2 steps in one go (slices, codebook restarts: all from the checkpointed generator)."""
    from wdm.train import train

    cfg = {**TINY_LDM, "ldm": {"vqgan": {**TINY_LDM["ldm"]["vqgan"], "steps": 3}}}
    train(cfg, phantom16, tmp_path / "a", stage="vqgan", progress=False)
    train(cfg, phantom16, tmp_path / "b", stage="vqgan", progress=False, max_steps=1)
    train(cfg, phantom16, tmp_path / "b", stage="vqgan", progress=False, resume=True)
    a, b = (torch.load(tmp_path / r / "checkpoints" / "step_0000003.pt", weights_only=True)
            for r in ("a", "b"))
    for name, sd in a["model"].items():
        for key, val in sd.items():
            assert torch.equal(val, b["model"][name][key]), (name, key)
    rows = []
    for r in ("a", "b"):
        with open(tmp_path / r / "loss.csv") as f:
            rows.append({row["step"]: (row["loss"], row["d_loss"], row["feat_match"])
                         for row in csv.DictReader(f)})
    assert rows[0] == rows[1] and len(rows[0]) == 3


@pytest.fixture(scope="module")
def two_stage_runs(tmp_path_factory, phantom16) -> dict[str, Path]:
    """Both stages trained 2 steps each through the CLI (`wdm-bench train` twice), no MedicalNet."""
    from wdm.cli import main

    tmp = tmp_path_factory.mktemp("ldm")
    base = tmp / "ldm.yaml"
    cfg = dict(TINY_LDM, ldm={"vqgan": {**TINY_LDM["ldm"]["vqgan"],
                                        "perceptual_weights": "auto:resnet_10_23dataset"}})
    base.write_text(yaml.safe_dump(cfg))
    mp = pytest.MonkeyPatch()
    mp.setenv("WDM_MEDICALNET_DIR", str(tmp / "no-weights"))
    mp.setenv("TORCH_HOME", str(tmp / "no-torch-home"))
    try:
        # one config file, two stages; stage 2 freezes the stage-1 run beside its own folder
        runs = {"vqgan": tmp / "ldm" / "vqgan", "run": tmp / "ldm" / "run"}
        assert main(["train", "--config", str(base), "--stage", "vqgan", "--data", str(phantom16),
                     "--out", str(runs["vqgan"]), "--no-progress"]) == 0
        assert main(["train", "--config", str(base), "--stage", "diffusion", "--data",
                     str(phantom16), "--out", str(runs["run"]), "--no-progress"]) == 0
    finally:
        mp.undo()
    runs["base"] = base
    return runs


def test_two_stages_and_sample_through_cli(two_stage_runs, tmp_path):
    from wdm.cli import main

    vq, run = two_stage_runs["vqgan"], two_stage_runs["run"]
    p1 = json.loads((vq / "train_profile.json").read_text())
    assert p1["steps_trained"] == 2 and p1["model_info"]["stage"] == "vqgan"
    # Perceptual term: no weights -> off, and the run says so (profile + loss log).
    assert p1["model_info"]["perceptual"].startswith("off")
    assert p1["model_info"]["perceptual_kind"] == "off"
    assert p1["model_info"]["discriminators"] == {"image_2d": True, "video_3d": True}
    with open(vq / "loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["perceptual_on"] for r in rows] == ["0", "0"]
    assert {"rec_l1", "commitment", "g_image", "g_video", "feat_match", "g_adv", "d_image",
            "d_video", "d_loss", "restarted"} <= set(rows[0])
    assert float(rows[0]["d_loss"]) == 0.0 and float(rows[1]["d_loss"]) > 0  # disc_start 1
    p2 = json.loads((run / "train_profile.json").read_text())
    assert p2["model_info"]["stage"] == "diffusion" and p2["model_info"]["latent_shape"] == [4, 4, 4, 4]
    lo, hi = p2["model_info"]["latent_range"]
    assert lo < hi
    out = tmp_path / "samples"
    assert main(["sample", "--run", str(run), "--n", "1", "--seed", "3", "--out", str(out),
                 "--no-progress"]) == 0
    prof = json.loads((out / "sample_profile.json").read_text())
    assert prof["model"] == "ldm" and prof["s_per_volume"] > 0
    from wdm.io import load_nifti

    vol, _ = load_nifti(out / "sample_0000.nii.gz")
    assert vol.shape == (16, 16, 16) and 0.0 <= vol.min() <= vol.max() <= 1.0


def test_stage2_checkpoint_carries_the_vqgan(two_stage_runs, tmp_path):
    """Sampling needs the stage-2 run only: the frozen VQ-GAN lives in its checkpoint."""
    from wdm.sample import sample

    moved = tmp_path / "moved"
    shutil.copytree(two_stage_runs["run"], moved / "run")
    stage1 = two_stage_runs["vqgan"]
    hidden = stage1.with_name("vqgan-hidden")
    stage1.rename(hidden)
    try:
        prof = sample(moved / "run", 1, 0, tmp_path / "s", progress=False)
    finally:
        hidden.rename(stage1)
    assert prof["n"] == 1 and (tmp_path / "s" / "sample_0000.nii.gz").exists()


def test_stage2_rejects_other_vqgan_architecture(two_stage_runs):
    cfg = stage_config(TINY_LDM, "diffusion", two_stage_runs["vqgan"])
    cfg["ldm"]["vqgan"]["n_codes"] = 64
    with pytest.raises(InputError, match="n_codes"):
        build_model(cfg, (16, 16, 16))
    with pytest.raises(InputError, match="not an ldm stage-1"):
        build_model(stage_config(TINY_LDM, "diffusion", two_stage_runs["run"]), (16, 16, 16))
    with pytest.raises(InputError, match="VQ-GAN trained on volumes"):
        build_model(stage_config(TINY_LDM, "diffusion", two_stage_runs["vqgan"]), (32, 32, 32))


def test_stage1_run_does_not_sample(two_stage_runs, tmp_path):
    from wdm.sample import sample

    with pytest.raises(InputError, match="stage-1"):
        sample(two_stage_runs["vqgan"], 1, 0, tmp_path / "s", progress=False)


def test_stage2_without_vqgan_is_an_error():
    model = build_model(stage_config(TINY_LDM, "diffusion", "/nonexistent/vqgan"), (16, 16, 16))
    assert isinstance(model, LatentDiffusionStage)
    with pytest.raises(InputError, match="no VQ-GAN"):
        model.loss(_blobs(), torch.Generator().manual_seed(0))


@pytest.mark.skipif(shutil.which("snakemake") is None and not
                    (Path(sys.executable).parent / "snakemake").exists(),
                    reason="snakemake not installed")
def test_snakemake_dry_run_has_both_ldm_stages(tmp_path):
    wf_cfg = tmp_path / "config.yaml"
    wf_cfg.write_text(yaml.safe_dump({
        "datasets": {"phantom-brain": {"resolutions": [16], "n_train": 6, "n_test": 4}},
        "models": ["ldm"],
        "evaluation": {"n_samples": 4, "weights": None, "depth": 10},
        "threads": 1,
    }))
    exe = Path(sys.executable).parent / "snakemake"
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    res = subprocess.run([str(exe) if exe.exists() else "snakemake", "-s",
                          str(REPO / "workflow" / "Snakefile"), "-n", "--configfile", str(wf_cfg),
                          "--directory", str(tmp_path), "results/table1.csv"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    for rule in ("train_stage", "train", "sample", "evaluate", "table1"):
        assert f"rule {rule}:" in out or f"\n{rule} " in out or f" {rule}\n" in out, (rule, out)
    assert "results/phantom-brain/16/ldm/vqgan/train_profile.json" in out
    assert "results/phantom-brain/16/ldm/samples/sample_profile.json" in out


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("snakemake") is None and not
                    (Path(sys.executable).parent / "snakemake").exists(),
                    reason="snakemake not installed")
def test_snakemake_runs_ldm_into_table1(tmp_path):
    run_cfg = tmp_path / "ldm_tiny.yaml"
    run_cfg.write_text(yaml.safe_dump(TINY_LDM))
    wf_cfg = tmp_path / "config.yaml"
    wf_cfg.write_text(yaml.safe_dump({
        "datasets": {"phantom-brain": {"resolutions": [16], "n_train": 6, "n_test": 4}},
        "models": ["ldm"],
        "model_configs": {"ldm": str(run_cfg)},
        "evaluation": {"n_samples": 2, "weights": None, "depth": 10},
        "threads": 1,
    }))
    exe = Path(sys.executable).parent / "snakemake"
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    res = subprocess.run([str(exe) if exe.exists() else "snakemake", "-s",
                          str(REPO / "workflow" / "Snakefile"), "results/table1.csv", "--cores", "2",
                          "--configfile", str(wf_cfg)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    with open(tmp_path / "results" / "table1.csv") as f:
        rows = list(csv.DictReader(f))
    ldm_rows = [r for r in rows if r["model"] == "ldm"]  # (plus any reference rows)
    assert len(ldm_rows) == 1 and ldm_rows[0]["steps_trained"] == "2"
    assert float(ldm_rows[0]["train_s_per_iteration"]) > 0 and float(ldm_rows[0]["fid"]) >= 0
    ldm = tmp_path / "results" / "phantom-brain" / "16" / "ldm"
    assert json.loads((ldm / "vqgan" / "train_profile.json").read_text())["model_info"]["stage"] == "vqgan"
    assert yaml.safe_load((ldm / "run" / "config.yaml").read_text())["ldm"]["vqgan_run"] == \
        "results/phantom-brain/16/ldm/vqgan"


def test_stage2_after_stage1_oom_is_an_oom_run_not_a_crash(tmp_path, phantom16):
    """A VQ-GAN that ran out of memory makes stage 2 an OOM run (then sampling passes it on)."""
    from wdm.sample import sample
    from wdm.train import train

    vq = tmp_path / "vqgan"
    vq.mkdir()
    (vq / "train_profile.json").write_text(json.dumps(
        {"status": "oom", "error": "OutOfMemoryError: CUDA out of memory", "model": "ldm"}))
    prof = train(stage_config(TINY_LDM, "diffusion", vq), phantom16, tmp_path / "run", progress=False)
    assert prof["status"] == "oom"
    assert "stage 1" in prof["error"] and "CUDA out of memory" in prof["error"]
    saved = json.loads((tmp_path / "run" / "train_profile.json").read_text())
    assert saved["status"] == "oom" and saved["s_per_iteration"] is None
    sp = sample(tmp_path / "run", 1, 0, tmp_path / "samples", progress=False)
    assert sp["status"] == "oom" and not list((tmp_path / "samples").glob("*.nii.gz"))
