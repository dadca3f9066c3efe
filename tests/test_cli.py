"""The wdm-bench command line: help for every sub-command, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wdm.cli import main

COMMANDS = ("prepare", "train", "sample", "evaluate", "table", "figure")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: wdm-bench " + cmd in capsys.readouterr().out


def test_console_script_runs():
    res = subprocess.run([sys.executable, "-m", "wdm.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and all(c in res.stdout for c in COMMANDS)


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"wdm-bench {argv[0]}: error: ")
    for n in needles:
        assert n in err[0], err[0]


def test_errors_are_one_line(capsys, tmp_path, phantom16):
    _one_line_error(capsys, ["prepare", "--dataset", "brats-x", "--out", str(tmp_path / "d")],
                    "unknown data set", "phantom-brain")
    _one_line_error(capsys, ["train", "--config", str(tmp_path / "missing.yaml"), "--data",
                             str(phantom16), "--out", str(tmp_path / "r")], "missing.yaml", "not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  lr: -1\n  stepz: 3\n")
    _one_line_error(capsys, ["train", "--config", str(bad), "--data", str(phantom16), "--out",
                             str(tmp_path / "r")], "bad.yaml", "training.lr", "stepz")
    _one_line_error(capsys, ["sample", "--run", str(tmp_path / "norun"), "--n", "2", "--seed", "0",
                             "--out", str(tmp_path / "s")], "no checkpoint")
    _one_line_error(capsys, ["evaluate", "--real", str(tmp_path / "none"), "--fake",
                             str(phantom16 / "test"), "--out", str(tmp_path / "m.json"),
                             "--weights", "none"], "none")
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "r").exists()


def test_prepare_then_table_and_figure(capsys, tmp_path, phantom16):
    import json

    res = tmp_path / "results" / "phantom-brain" / "16" / "wdm"
    res.mkdir(parents=True)
    (res / "metrics.json").write_text(json.dumps({"fid": 1.5, "ms_ssim": 0.5, "n_real": 6,
                                                  "n_fake": 3, "feature_extractor": "x"}))
    out = tmp_path / "results" / "table1.csv"
    assert main(["table", "--results", str(tmp_path / "results"), "--out", str(out)]) == 0
    import csv

    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    row = rows[0]
    assert (row["dataset"], row["resolution"], row["model"]) == ("phantom-brain", "16", "wdm")
    assert (float(row["fid"]), float(row["ms_ssim"]), row["n_real"]) == (1.5, 0.5, "6")
    png = tmp_path / "fig.png"
    assert main(["figure", "--real", str(phantom16 / "train"), "--fake",
                 f"copy={phantom16 / 'test'}", "--out", str(png), "--n", "2"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
