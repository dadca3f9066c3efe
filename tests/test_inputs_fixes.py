"""What the fixes of the bad-input corpus (tests/test_bad_inputs.py) keep working for good inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from eval.evaluate import real_files, real_statistics
from eval.metrics import fid, fid_bootstrap_ci, fid_from_features, frechet_distance
from tests.conftest import TINY_RUN
from wdm.cli import main
from wdm.config import EvaluationSettings, load_run_config, load_workflow_config, parse_yaml
from wdm.data import phantom_dataset
from wdm.data.prepare import prepare, split_files, verify_manifest
from wdm.io import InputError, save_nifti

#: no real MedicalNet weights or hub cache leak into these tests (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("isolated_hub")


def _settings(**values) -> EvaluationSettings:
    return EvaluationSettings.from_mapping({"weights": None, "depth": 10, "seed": 0, **values})


# ------------------------------------------------------------------------------ YAML
@pytest.mark.parametrize("text, value", [("1e-4", 1e-4), ("1E-4", 1e-4), ("2e3", 2000.0), ("1.0e-4", 1e-4),
                                         ("-1.5e+2", -150.0), (".5", 0.5), ("3", 3), ("0.25", 0.25),
                                         ("'1e-4'", "1e-4"), ("v1e4", "v1e4")])
def test_yaml_floats_as_in_yaml_1_2(text, value):
    got = parse_yaml(f"lr: {text}\n")["lr"]
    assert got == value and type(got) is type(value)


def test_lr_1e_4_is_a_number_in_a_run_config(tmp_path):
    text = yaml.safe_dump(TINY_RUN).replace("training:\n", "training:\n  lr: 1e-4\n")
    (tmp_path / "c.yaml").write_text(text)
    assert load_run_config(tmp_path / "c.yaml")["training"]["lr"] == pytest.approx(1e-4)


def test_merge_keys_may_be_overridden_but_keys_not_repeated(tmp_path):
    assert parse_yaml("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n")["d"] == {"x": 3, "y": 2}
    with pytest.raises(InputError, match=r"w\.yaml: duplicate key 'x' at lines 3 and 4"):
        parse_yaml("a: 1\nd:\n  x: 1\n  x: 2\n", source="w.yaml")


def test_workflow_config_of_the_repository_still_reads():
    cfg = load_workflow_config(Path(__file__).resolve().parents[1] / "config" / "config.yaml")
    assert "evaluation" in cfg and "datasets" in cfg


def test_an_explicit_empty_mapping_is_the_defaults(tmp_path):
    (tmp_path / "e.yaml").write_text("{}\n")
    assert load_run_config(tmp_path / "e.yaml")["model"] == "wdm"


# ------------------------------------------------------------------------------ real volumes
def test_real_split_uses_the_manifest_and_ignores_stray_files(phantom16, tmp_path):
    data = Path(shutil.copytree(phantom16, tmp_path / "data"))
    listed = split_files(data, "train")
    save_nifti(data / "train" / "stray.nii.gz", np.random.default_rng(0).random((16,) * 3))
    assert real_files(data / "train") == sorted(listed, key=lambda p: p.name)
    stats = real_statistics(data / "train", _settings())
    assert stats["meta"]["n_real"] == len(listed) and "stray.nii.gz" not in stats["meta"]["files"]
    # a plain folder (no manifest beside it) keeps every volume
    plain = Path(shutil.copytree(data / "train", tmp_path / "plain"))
    assert len(real_files(plain)) == len(listed) + 1


# ------------------------------------------------------------------------------ FID
def test_frechet_distance_of_identical_sets_is_never_negative():
    # unclamped, rounding leaves about -1e-12 for these (a squared distance is >= 0)
    for seed in range(5):
        x = np.random.default_rng(seed).normal(size=(10, 2048))
        small = x[:, :8]
        mu, sigma = small.mean(0), np.cov(small, rowvar=False)
        for d2 in (fid_from_features(x, x), fid(small, small), frechet_distance(mu, sigma, mu, sigma)):
            assert 0.0 <= d2 < 1e-9
    lo, hi = fid_bootstrap_ci(x, x, n_bootstrap=5)
    assert 0.0 <= lo <= hi


def test_evaluate_a_folder_against_itself(phantom16, tmp_path, capsys):
    out = tmp_path / "m.json"
    argv = ["evaluate", "--real", str(phantom16 / "test"), "--fake", str(phantom16 / "test"), "--out",
            str(out), "--weights", "none", "--depth", "10", "--n-bootstrap", "10", "--device", "auto"]
    assert main(argv) == 0, capsys.readouterr().err
    m = json.loads(out.read_text())
    assert 0.0 <= m["fid"] < 1e-9 and m["fid_ci_low"] >= 0.0


# ------------------------------------------------------------------------------ prepare --overwrite
def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


def test_overwrite_replaces_a_data_folder_or_an_empty_one(tmp_path, capsys):
    out = tmp_path / "d"
    argv = ["prepare", "--dataset", "phantom-brain", "--size", "16", "--n-train", "2", "--n-test", "1",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    first = verify_manifest(out)
    assert main([*argv, "--seed", "1", "--overwrite"]) == 0, capsys.readouterr().err
    assert verify_manifest(out) != first
    (tmp_path / "empty").mkdir()
    assert main([*argv[:-3], "--out", str(tmp_path / "empty"), "--overwrite", "--no-progress"]) == 0
    assert _leftovers(tmp_path) == []


def test_a_failed_swap_leaves_no_hidden_folder(tmp_path, monkeypatch):
    out = prepare("phantom-brain", tmp_path / "d", size=16, n_train=2, n_test=1)
    real_replace = phantom_dataset.os.replace

    def refuse_first(src, dst):
        if Path(src) == out:
            raise OSError("device busy (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(phantom_dataset.os, "replace", refuse_first)
    with pytest.raises(OSError, match="simulated"):
        prepare("phantom-brain", out, size=16, n_train=2, n_test=1, seed=3, overwrite=True)
    assert _leftovers(tmp_path) == [] and verify_manifest(out)


# ------------------------------------------------------------------------------ the real console
@pytest.mark.parametrize("argv, words", [
    (["evaluate", "--real", "{d}/train", "--fake", "{d}/test", "--out", "{t}/m.json", "--device", "gpu0"],
     "--device gpu0"),
    (["settings", "--section", "evaluation", "--json", "[1]", "--out", "{t}/e.yaml"], "JSON object"),
    (["sample", "--run", "{t}", "--n", "1", "--seed", "-1", "--out", "{t}/s"], "--seed"),
])
def test_console_prints_one_line_without_traceback(argv, words, phantom16, tmp_path):
    import subprocess
    import sys

    argv = [a.format(d=phantom16, t=tmp_path) for a in argv]
    res = subprocess.run([sys.executable, "-m", "wdm.cli", "--log-level", "WARNING", *argv],
                         capture_output=True, text=True, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode in (1, 2) and len(lines) == 1, res.stderr
    assert lines[0].startswith(f"wdm-bench {argv[0]}: error: ") and words in lines[0]
    assert "Traceback" not in res.stderr and not any(tmp_path.iterdir())
