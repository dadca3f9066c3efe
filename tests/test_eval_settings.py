"""The evaluation settings travel one way: the config's ``evaluation`` section (validated once by the
schema, defaults from the schema only) -> ``--config FILE`` -> command-line flags that only override,
through the same schema -> :func:`eval.evaluate.evaluate`. Tiny data: 16³ volumes, untrained ResNet-10.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from eval.evaluate import PROTOCOLS
from tests.test_evaluate import _folder
from wdm.cli import main
from wdm.config import EvaluationSettings, load_evaluation_settings, load_schema

WORKFLOW_CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"

#: no real MedicalNet weights or hub cache leak into these tests (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("isolated_hub")

#: the tiny evaluation: no MedicalNet, a small network, window and bootstrap.
TINY = {"weights": None, "depth": 10, "kernel_size": 3, "n_bootstrap": 20, "seed": 0}


@pytest.fixture
def dirs(tmp_path):
    """4 real and 5 generated volumes."""
    return _folder(tmp_path / "real", 4, 0), _folder(tmp_path / "fake", 5, 1, scale=0.8)


def _workflow_config(path: Path, **evaluation) -> Path:
    """The repository's workflow config with its ``evaluation`` section replaced."""
    cfg = yaml.safe_load(WORKFLOW_CONFIG.read_text())
    cfg["evaluation"] = {**TINY, **evaluation}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _evaluate(dirs, out: Path, *extra: str) -> dict:
    real, fake = dirs
    code = main(["evaluate", "--real", str(real), "--fake", str(fake), "--out", str(out), *extra])
    assert code == 0
    return json.loads(out.read_text())


def _one_line_error(capsys, argv: list[str], *needles: str) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"wdm-bench {argv[0]}: error: "), err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def _width(m: dict, name: str) -> float:
    return m[f"{name}_ci_high"] - m[f"{name}_ci_low"]


def test_ci_level_of_the_config_file_reaches_the_intervals(dirs, tmp_path):
    narrow = _evaluate(dirs, tmp_path / "m50.json", "--config",
                       str(_workflow_config(tmp_path / "c50.yaml", ci_level=0.5)))
    wide = _evaluate(dirs, tmp_path / "m99.json", "--config",
                     str(_workflow_config(tmp_path / "c99.yaml", ci_level=0.99)))
    assert narrow["fid"] == wide["fid"] and narrow["ms_ssim"] == wide["ms_ssim"]
    assert _width(narrow, "fid") < _width(wide, "fid")
    assert 0 <= _width(narrow, "ms_ssim") <= _width(wide, "ms_ssim")
    assert wide["fid_ci_low"] <= narrow["fid_ci_low"] <= narrow["fid_ci_high"] <= wide["fid_ci_high"]
    assert (narrow["ci_level"], narrow["config"]["ci_level"]) == (0.5, 0.5)
    assert (wide["ci_level"], wide["config"]["ci_level"]) == (0.99, 0.99)
    # every other setting came from the file too
    assert narrow["config"] == {**EvaluationSettings.from_mapping(TINY).as_dict(), "ci_level": 0.5}
    assert (narrow["ms_ssim_kernel"], narrow["n_bootstrap"]) == (3, 20)


def test_flags_override_the_file(dirs, tmp_path):
    cfg = str(_workflow_config(tmp_path / "c99.yaml", ci_level=0.99))
    from_file = _evaluate(dirs, tmp_path / "file.json", "--config",
                          str(_workflow_config(tmp_path / "c50.yaml", ci_level=0.5)))
    flagged = _evaluate(dirs, tmp_path / "flag.json", "--config", cfg, "--ci-level", "0.5")
    for key in ("fid_ci_low", "fid_ci_high", "ms_ssim_ci_low", "ms_ssim_ci_high", "ci_level"):
        assert flagged[key] == from_file[key], key
    assert flagged["config"] == from_file["config"]
    seeded = _evaluate(dirs, tmp_path / "seed.json", "--config", cfg, "--seed", "7",
                       "--n-bootstrap", "0")
    assert seeded["seed"] == 7 and seeded["config"]["seed"] == 7
    assert seeded["fid_ci_low"] is None and seeded["config"]["ci_level"] == 0.99
    assert seeded["feature_extractor"] == "untrained-resnet10-seed7 (NOT MedicalNet)"


@pytest.mark.parametrize("flag, value, field", [
    ("--kernel-size", "1", "kernel_size"),
    ("--ci-level", "1.5", "ci_level"),
    ("--n-bootstrap", "-1", "n_bootstrap"),
    ("--depth", "11", "depth"),
    ("--protocol", "x", "protocol"),
], ids=["kernel", "ci", "bootstrap", "depth", "protocol"])
def test_out_of_bounds_override_is_a_one_line_error(flag, value, field, dirs, tmp_path, capsys):
    real, fake = dirs
    out = tmp_path / "m.json"
    _one_line_error(capsys, ["evaluate", "--real", str(real), "--fake", str(fake), "--out", str(out),
                             "--weights", "none", "--depth", "10", flag, value],
                    "command line", f"{field}: ")
    assert not out.exists()


def test_out_of_bounds_file_names_the_file_and_field(dirs, tmp_path, capsys):
    real, fake = dirs
    cfg = _workflow_config(tmp_path / "bad.yaml", kernel_size=1)
    _one_line_error(capsys, ["evaluate", "--real", str(real), "--fake", str(fake), "--out",
                             str(tmp_path / "m.json"), "--config", str(cfg)],
                    "bad.yaml", "kernel_size", "minimum of 3")
    _one_line_error(capsys, ["real-stats", "--real", str(real), "--out", str(tmp_path / "r.npz"),
                             "--config", str(cfg)], "bad.yaml", "kernel_size")
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "r.npz").exists()


def test_n_fake_all_config_or_a_count(dirs, tmp_path, capsys):
    cfg = str(_workflow_config(tmp_path / "c.yaml", n_samples=3, n_bootstrap=0))
    assert _evaluate(dirs, tmp_path / "a.json", "--config", cfg)["n_fake"] == 5  # default: all
    assert _evaluate(dirs, tmp_path / "b.json", "--config", cfg, "--n-fake", "all")["n_fake"] == 5
    m = _evaluate(dirs, tmp_path / "c.json", "--config", cfg, "--n-fake", "config")
    assert m["n_fake"] == 3 and m["ms_ssim_pairs"] == 3 and m["config"]["n_samples"] == 3
    assert _evaluate(dirs, tmp_path / "d.json", "--config", cfg, "--n-fake", "2")["n_fake"] == 2
    real, fake = dirs
    for bad in ("some", "0", "-3", "2.5"):
        with pytest.raises(SystemExit) as exc:
            main(["evaluate", "--real", str(real), "--fake", str(fake), "--out",
                  str(tmp_path / "x.json"), "--n-fake", bad])
        assert exc.value.code == 2
        assert "--n-fake: expected a count N >= 1, 'all' or 'config'" in capsys.readouterr().err
    cfg6 = str(_workflow_config(tmp_path / "c6.yaml", n_samples=6))
    _one_line_error(capsys, ["evaluate", "--real", str(real), "--fake", str(fake), "--out",
                             str(tmp_path / "x.json"), "--config", cfg6, "--n-fake", "config"],
                    "fewer than n_fake=6")


def test_settings_command_writes_what_load_reads(tmp_path, capsys):
    raw = {"ci_level": 0.8, "n_samples": 4, "weights": None, "max_pairs": 10}
    out = tmp_path / "settings" / "evaluation.yaml"
    assert main(["settings", "--section", "evaluation", "--json", json.dumps(raw),
                 "--out", str(out)]) == 0
    written = yaml.safe_load(out.read_text())
    assert list(written) == ["evaluation"]
    assert load_evaluation_settings(out) == EvaluationSettings.from_mapping(raw)
    assert written["evaluation"]["kernel_size"] == 7 and written["evaluation"]["weights"] is None
    assert [p.name for p in out.parent.iterdir()] == ["evaluation.yaml"]  # atomic: no temporary

    bad = tmp_path / "bad.yaml"
    _one_line_error(capsys, ["settings", "--section", "evaluation", "--json",
                             '{"kernel_size": 1}', "--out", str(bad)], "--json", "kernel_size")
    _one_line_error(capsys, ["settings", "--section", "evaluation", "--json",
                             '{"kernelsize": 5}', "--out", str(bad)], "--json", "kernelsize")
    _one_line_error(capsys, ["settings", "--section", "evaluation", "--json",
                             "{seed: 1}", "--out", str(bad)], "--json", "not valid JSON")
    _one_line_error(capsys, ["settings", "--section", "evaluation", "--json", "[1]",
                             "--out", str(bad)], "--json", "JSON object")
    assert not bad.exists()
    with pytest.raises(SystemExit) as exc:
        main(["settings", "--section", "training", "--json", "{}", "--out", str(bad)])
    assert exc.value.code == 2


def test_settings_file_drives_real_stats_and_evaluate(dirs, tmp_path):
    """The workflow's path: materialise the section, then pass it to both rules as --config."""
    real, fake = dirs
    settings = tmp_path / "evaluation.yaml"
    assert main(["settings", "--section", "evaluation", "--json",
                 json.dumps({**TINY, "seed": 3, "ci_level": 0.9}), "--out", str(settings)]) == 0
    cache, cached, direct = tmp_path / "rs.npz", tmp_path / "cached.json", tmp_path / "direct.json"
    assert main(["real-stats", "--real", str(real), "--out", str(cache), "--config",
                 str(settings)]) == 0
    assert main(["evaluate", "--real-stats", str(cache), "--fake", str(fake), "--out", str(cached),
                 "--config", str(settings)]) == 0
    a = json.loads(cached.read_text())
    b = _evaluate(dirs, direct, "--config", str(settings))
    assert a["fid"] == pytest.approx(b["fid"], rel=1e-9, abs=1e-9)
    assert (a["seed"], a["ci_level"], a["config"]) == (3, 0.9, b["config"])
    assert a["config"] == load_evaluation_settings(settings).as_dict()


def test_schema_protocols_are_the_evaluation_protocols():
    props = load_schema()["$defs"]["evaluation"]["properties"]
    assert set(props["protocol"]["enum"]) == set(PROTOCOLS)
    assert set(props) == set(EvaluationSettings.__dataclass_fields__)
