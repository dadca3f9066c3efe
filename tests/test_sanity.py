"""The metric sanity suite: corruptions (eval.corruptions), the core (eval.sanity), the CLI.

Tiny shapes (16^3, a handful of volumes, an untrained ResNet-10 or a hand-made feature map).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from eval import corruptions as C
from eval.memorisation import memorisation_report, nearest_neighbours
from eval.sanity import CURVE, WORSE, FeatureCache, corrupt_set, run_sanity, summarise
from wdm.config import EvaluationSettings


def _volumes(seed: int, n: int, side: int = 16) -> np.ndarray:
    """Smooth random 'anatomy' in [0, 1]: (n, side, side, side) float64."""
    rng = np.random.default_rng(seed)
    return np.stack([np.clip(ndimage.gaussian_filter(rng.random((side,) * 3), 1.5) * 2 - 0.5, 0, 1)
                     for _ in range(n)])


def _block_features(v: np.ndarray) -> np.ndarray:
    """Means of the 8 octants of each 16^3 volume: (N, 16, 16, 16) -> (N, 8), a low-dim feature map."""
    return v.reshape(len(v), 2, 8, 2, 8, 2, 8).mean((2, 4, 6)).reshape(len(v), -1)


VOXEL_KINDS = [name for name, c in C.CORRUPTIONS.items() if c.kind == "voxel"]


@pytest.mark.parametrize("name", VOXEL_KINDS)
def test_voxel_corruption_is_identity_at_zero_and_grows(name):
    c = C.get_corruption(name)
    vol = _volumes(0, 1)[0]
    grid = C.strength_grid(c)
    assert grid[0] == 0 and len(grid) == 5
    outs = [C.corrupt_volume(c, vol, s, np.random.default_rng(7)) for s in grid]
    np.testing.assert_array_equal(outs[0], vol)
    mse = [float(((o - vol) ** 2).mean()) for o in outs]
    assert all(b > a for a, b in zip(mse, mse[1:], strict=False)), mse
    assert all(o.min() >= 0 and o.max() <= 1 and o.shape == vol.shape for o in outs)


def test_slab_seams_are_discontinuities_at_the_slab_boundaries_only():
    rng = np.random.default_rng(0)
    plane = ndimage.gaussian_filter(rng.random((16, 16)), 2) * 0.5 + 0.2
    vol = np.broadcast_to(plane, (16, 16, 16)).copy()  # constant along axis 0
    out = C.slab_seams(vol, 0.3, np.random.default_rng(1), n_slabs=4, axis=0)
    jumps = np.abs(np.diff(out, axis=0)).max(axis=(1, 2))  # jump between slice i and i + 1
    seams = [b - 1 for b in C.slab_bounds(16, 4)]
    assert seams == [3, 7, 11]
    assert (jumps[seams] > 1e-3).all()
    assert np.delete(jumps, seams).max() == 0.0


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_mode_collapse_gives_exactly_round_f_n_copies(fraction):
    vols = _volumes(1, 8)
    out = C.mode_collapse(vols, fraction, np.random.default_rng(3))
    k = round(fraction * 8)
    changed = [i for i in range(8) if not np.array_equal(out[i], vols[i])]
    if k == 0:
        np.testing.assert_array_equal(out, vols)
        return
    same = [[j for j in range(8) if np.array_equal(out[i], out[j])] for i in range(8)]
    assert max(len(s) for s in same) == k  # k identical volumes, the others distinct
    assert len(changed) == k - 1  # one of the k positions is the source itself


def test_memorisation_flags_the_copies_while_fid_stays_in_the_real_interval():
    """Memorisation is invisible to FID (it even improves), but the memorisation score sees it."""
    test, train = _volumes(10, 12), _volumes(11, 30)
    s = EvaluationSettings.from_mapping({"n_bootstrap": 100, "kid_subsets": 10, "seed": 0})
    c = C.get_corruption("memorisation")
    calib = nearest_neighbours(test, train, metric="ncc")
    for f in (0.25, 0.5):
        out = corrupt_set(c, test, f, 0, train)
        copies = {i for i in range(12) if any(np.array_equal(out[i], t) for t in train)}
        assert len(copies) == round(f * 12)
        rep = memorisation_report(nearest_neighbours(out, train, metric="ncc"), calib, quantile=0.01)
        assert copies <= {x["index"] for x in rep["suspects"]}
    rows = run_sanity(test, train, {"octants": _block_features}, s, corruptions=["memorisation"],
                      max_pairs=10, curve_seeds=2)
    fid = {r["strength"]: r for r in rows if r["metric"] == "fid" and r["corruption"] == "memorisation"}
    mem = {r["strength"]: r["value"] for r in rows if r["metric"] == "memorisation"
           and r["extractor"] == "octants" and r["corruption"] == "memorisation"}
    for f in (0.25, 0.5):
        assert fid[f]["real_low"] <= fid[f]["value"] <= fid[f]["real_high"]
        assert mem[f] >= round(f * 12) / 12
    assert fid[1.0]["worse"] is False and fid[1.0]["detects"] is False
    assert rows[0]["n_test"] == 12 and rows[0]["n_train"] == 30


def test_summarise_on_a_hand_checkable_series():
    up = summarise([0, 1, 2, 3], [1.0, 2.0, 3.0, 5.0], (0.5, 1.5), WORSE["fid"])
    assert up == {"spearman": 1.0, "monotone": True, "leaves_interval": True, "worse": True,
                  "detects": True}
    # ranks of the values 1, 4, 3, 2: d = 0, -2, 0, 2, rho = 1 - 6 * 8 / (4 * 15) = 0.2
    bump = summarise([0, 1, 2, 3], [1.0, 3.0, 2.0, 1.2], (0.5, 1.5), WORSE["fid"])
    assert bump["spearman"] == pytest.approx(0.2) and bump["monotone"] is False
    assert bump["leaves_interval"] is False and bump["detects"] is False
    down = summarise([0, 1, 2, 3], [1.0, 0.9, 0.5, 0.1], (0.8, 1.2), WORSE["recall"])
    assert down["spearman"] == -1.0 and down["detects"] is True
    flat = summarise([0, 1, 2], [1.0, 1.0, 1.0], (0.5, 1.5), 1)
    assert flat["spearman"] is None and flat["monotone"] is False
    assert summarise([0, 1], [1.0, None], (0.5, 1.5), 1)["leaves_interval"] is None


def test_feature_cache_computes_each_distinct_volume_once():
    calls = []
    cache = FeatureCache(lambda v: (calls.append(len(v)), _block_features(v))[1])
    vols = _volumes(2, 4)
    np.testing.assert_array_equal(cache(vols), _block_features(vols))
    np.testing.assert_array_equal(cache(vols[[0, 0, 3]]), _block_features(vols[[0, 0, 3]]))
    assert calls == [4] and cache.computed == 4


def test_run_sanity_rows_and_curve():
    test, train = _volumes(20, 8), _volumes(21, 12)
    s = EvaluationSettings.from_mapping({"n_bootstrap": 20, "kid_subsets": 5})
    rows = run_sanity(test, train, {"octants": _block_features}, s, corruptions=["noise", "gamma"],
                      n_strengths=2, max_pairs=8, curve_seeds=2, frd_note="FRD off")
    noise = [r for r in rows if r["metric"] == "fid" and r["corruption"] == "noise"]
    assert [r["strength"] for r in noise] == [0.0, 0.1, 0.2]
    fid = [r for r in rows if r["metric"] == "fid" and r["corruption"] == "gamma"]  # octant means drop
    assert [r["strength"] for r in fid] == [0.0, 1.0, 2.0]
    assert fid[-1]["value"] > fid[-1]["real_high"] and fid[0]["value"] == fid[0]["real_value"]
    assert fid[0]["spearman"] == 1.0 and fid[0]["detects"] is True
    curve = [r for r in rows if r["corruption"] == CURVE and r["metric"] == "fid"]
    assert [r["strength"] for r in curve] == [5.0, 6.0, 7.0, 8.0] and curve[0]["value_sd"] > 0
    frd = [r for r in rows if r["metric"] == "frd"]
    assert frd and all(r["value"] is None and r["note"] == "FRD off" for r in frd)
    with pytest.raises(ValueError, match="allowed: noise, blur"):
        run_sanity(test, train, {"octants": _block_features}, s, corruptions=["smudge"])
    with pytest.raises(ValueError, match="need >= 6 test"):
        run_sanity(test[:3], train, {"octants": _block_features}, s)


# ------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def data16(tmp_path_factory) -> Path:
    from wdm.data.prepare import prepare

    return prepare("phantom-brain", tmp_path_factory.mktemp("sanity") / "phantom16", size=16,
                   n_train=8, n_test=6, seed=0, progress=False)


def _cli(data: Path, out: Path, *extra: str) -> int:
    from wdm.cli import main

    return main(["--log-level", "WARNING", "sanity", "--data", str(data), "--out", str(out),
                 "--figure", str(out / "sanity.png"), "--extractor", "none", "--depth", "10",
                 "--corruptions", "noise", "mode-collapse", "--strengths", "2", "--n-bootstrap",
                 "20", "--max-pairs", "6", "--no-progress", *extra])


def test_cli_writes_csv_and_png_deterministically(data16, tmp_path):
    import pandas as pd

    assert _cli(data16, tmp_path / "a") == 0
    assert _cli(data16, tmp_path / "b") == 0
    csv = (tmp_path / "a" / "sanity.csv").read_bytes()
    assert csv == (tmp_path / "b" / "sanity.csv").read_bytes()
    assert (tmp_path / "a" / "sanity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    df = pd.read_csv(tmp_path / "a" / "sanity.csv")
    for col in ("extractor", "metric", "corruption", "strength", "value", "real_low", "real_high",
                "spearman", "leaves_interval", "monotone", "n_test", "n_train", "seed"):
        assert col in df.columns
    assert set(df["corruption"]) == {"noise", "mode-collapse", CURVE}
    assert {"none", "voxels"} <= set(df["extractor"]) and (df["n_test"] == 6).all()
    assert not list((tmp_path / "a").glob(".*"))  # no temporary file left


def _one_line_error(capsys, code: int, *needles: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("wdm-bench sanity: error:"), err
    for n in needles:
        assert n in err[0], err[0]


def test_cli_refuses_bad_input_with_one_line(data16, tmp_path, capsys, phantom16):
    _one_line_error(capsys, _cli(data16, tmp_path / "x", "--corruptions", "smudge"),
                    "unknown corruption 'smudge'", "allowed: noise, blur")
    _one_line_error(capsys, _cli(phantom16, tmp_path / "y"), "need >= 6 test")
    _one_line_error(capsys, _cli(tmp_path / "nowhere", tmp_path / "z"), "nowhere")
    only_train = tmp_path / "only_train"
    only_train.mkdir()
    lines = (data16 / "manifest.csv").read_text().splitlines()
    (only_train / "manifest.csv").write_text("\n".join([lines[0], *[x for x in lines[1:] if ",train," in x]]))
    _one_line_error(capsys, _cli(only_train, tmp_path / "w"), "split 'test' is empty")
    assert not (tmp_path / "x").exists()


def test_frd_backend_runs_on_the_clean_and_strongest_sets_only():
    from eval.metrics import fid_from_features
    from eval.sanity import RADIOMICS, FrdBackend

    seen = []
    backend = FrdBackend(lambda v: (seen.append(len(v)), _block_features(v))[1], fid_from_features,
                         n_bootstrap=5)
    s = EvaluationSettings.from_mapping({"n_bootstrap": 10, "kid_subsets": 5})
    rows = run_sanity(_volumes(30, 6), _volumes(31, 8), {"octants": _block_features}, s,
                      corruptions=["gamma"], n_strengths=3, max_pairs=5, curve_seeds=2, frd=backend)
    frd = [r for r in rows if r["extractor"] == RADIOMICS]
    assert [r["value"] is not None for r in frd] == [True, False, False, True]
    assert frd[0]["spearman"] is None and frd[-1]["leaves_interval"] is True
    assert seen == [8, 6, 6]  # train, clean test, strongest set
