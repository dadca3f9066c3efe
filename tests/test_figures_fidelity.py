"""FID-against-1/N and nearest-training-volume figures: artists drawn, PNGs written, bad input refused."""

from __future__ import annotations

import math

import matplotlib.image as mpimg
import matplotlib.text
import numpy as np
import pytest

from eval.figures_fidelity import _build_fid_vs_n, _build_nearest, fid_vs_n_figure, nearest_figure
from eval.plotting import pyplot
from wdm.io import InputError

NOTE = "wdm protocol · untrained-resnet50 (NOT MedicalNet) · 2048-d · seed 1234"


def _curve(model: str, fid_inf: float, slope: float, ns=(20, 40, 80, 160)) -> dict:
    return {"model": model, "ns": list(ns), "fids": [fid_inf + slope / n for n in ns],
            "fid_inf": fid_inf, "slope": slope}


def _pair(i: int, shape=(8, 10, 9)) -> dict:
    rng = np.random.default_rng(i)
    return {"fake_name": f"sample_{i}.nii.gz", "train_name": f"train_{i}.nii.gz", "fake": rng.random(shape),
            "train": rng.random(shape), "distance": 0.01 * (i + 1), "space": "voxel (1-NCC)"}


def _by_gid(fig, prefix: str) -> dict:
    return {ln.get_gid().split(":", 1)[1]: ln for ax in fig.axes for ln in ax.get_lines()
            if (ln.get_gid() or "").startswith(prefix + ":")}


def _texts(fig) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))


def _check_png(path, min_h: int, min_w: int) -> None:
    assert path.exists() and path.stat().st_size > 5_000
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] >= min_h and img.shape[1] >= min_w
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # atomic: no temporary left


def test_fid_vs_n_artists():
    curves = [_curve("wdm", 12.0, 300.0), _curve("hagan", 30.0, 500.0), _curve("reference", 1.0, 80.0)]
    curves[1]["fids"][2] = math.nan
    fig = _build_fid_vs_n(curves, title="FID vs N", protocol_note=NOTE)
    try:
        assert len(fig.axes) == 1  # the top N axis is a child axes
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert labels[0].startswith("wdm: FID∞ = 12 ") and labels[1].startswith("hagan: FID∞ = 30 ")
        assert len(labels) == 3 and "FID at N = 160" in labels[0]
        stars, fits, points = (_by_gid(fig, g) for g in ("fid_inf", "fit", "points"))
        assert set(stars) == set(fits) == set(points) == {"wdm", "hagan", "reference"}
        for c in curves:
            x, y = stars[c["model"]].get_data()
            assert list(x) == [0.0] and list(y) == pytest.approx([c["fid_inf"]])
            fx, fy = fits[c["model"]].get_data()
            assert fx[0] == 0.0 and fy[0] == pytest.approx(c["fid_inf"])
            assert fy[1] == pytest.approx(c["fid_inf"] + c["slope"] * fx[1])
        assert len(points["hagan"].get_xdata()) == 3 and len(points["wdm"].get_xdata()) == 4  # NaN skipped
        assert list(points["wdm"].get_xdata()) == pytest.approx([1 / 20, 1 / 40, 1 / 80, 1 / 160])
        assert fits["reference"].get_linestyle() == "--" and fits["wdm"].get_linestyle() == "-"
        assert fits["reference"].get_color() == "0.35"
        assert fits["wdm"].get_color() != fits["hagan"].get_color()
        assert "FID vs N" in _texts(fig) and NOTE in _texts(fig)
        top = fig.axes[0].child_axes[0]
        assert [t.get_text() for t in top.get_xticklabels()][0] == "∞"
    finally:
        pyplot().close(fig)


def test_fid_vs_n_writes_png(tmp_path):
    out = fid_vs_n_figure([_curve("wdm", 5.0, 100.0)], tmp_path / "figs" / "fid_vs_n.png", title="t",
                          protocol_note=NOTE)
    assert out == tmp_path / "figs" / "fid_vs_n.png"
    _check_png(out, 300, 600)


@pytest.mark.parametrize("curves, match", [
    ([], "curves is empty"),
    ([{**_curve("wdm", 1.0, 1.0), "fids": [1.0, 2.0]}], "'fids' has 2 values but 'ns' has 4"),
    ([{**_curve("wdm", 1.0, 1.0), "ns": []}], "'ns'"),
    ([{**_curve("wdm", 1.0, 1.0), "ns": [0, 10, 20, 30]}], "'ns'"),
    ([{k: v for k, v in _curve("wdm", 1.0, 1.0).items() if k != "slope"}], "'slope'"),
    ([{**_curve("wdm", 1.0, 1.0), "fid_inf": "low"}], "'fid_inf'"),
    ([{**_curve("", 1.0, 1.0)}], "'model'"),
])
def test_fid_vs_n_bad_input(tmp_path, curves, match):
    with pytest.raises(InputError, match=match):
        fid_vs_n_figure(curves, tmp_path / "f.png", title="t", protocol_note=NOTE)
    assert not any(tmp_path.iterdir())


def test_nearest_rows_and_labels(tmp_path):
    pairs = [_pair(i) for i in range(3)]
    fig = _build_nearest(pairs, title="copies", protocol_note=NOTE, n_generated=50, threshold=0.2)
    try:
        assert len(fig.axes) == 3 * 6
        for ax in fig.axes:
            im = ax.get_images()[0]
            assert im.get_clim() == (0.0, 1.0) and im.get_cmap().name == "gray"
            assert not ax.get_xticks().size and not ax.get_yticks().size
        label = fig.axes[6].get_ylabel()  # first panel of row 2
        assert "sample_1.nii.gz" in label and "train_1.nii.gz" in label and "0.02" in label
        assert "voxel (1-NCC)" in label
        text = _texts(fig)
        assert "3 of 50 generated volumes below the threshold" in text and "0.2" in text
        assert "more, see memorisation.csv" not in text
    finally:
        pyplot().close(fig)
    out = nearest_figure(pairs, tmp_path / "nearest.png", title="copies", protocol_note=NOTE)
    _check_png(out, 400, 800)


@pytest.mark.parametrize(("given", "kw", "more"), [
    (5, {"max_rows": 2}, "+3 more"),      # more pairs than rows
    (2, {"n_total": 11}, "+9 more"),      # only the drawn pairs given, the rest counted
])
def test_nearest_truncates(given, kw, more):
    fig = _build_nearest([_pair(i) for i in range(given)], title="t", protocol_note=NOTE, **kw)
    try:
        assert len(fig.axes) == 2 * 6
        assert f"{more}, see memorisation.csv" in _texts(fig)
    finally:
        pyplot().close(fig)


def test_nearest_total_below_pairs_given_is_refused():
    with pytest.raises(InputError, match="n_total must be >= the 2 pairs given, got 1"):
        _build_nearest([_pair(i) for i in range(2)], title="t", protocol_note=NOTE, n_total=1)


def test_nearest_empty(tmp_path):
    fig = _build_nearest([], title="t", protocol_note=NOTE, n_generated=64, threshold=0.05)
    try:
        text = _texts(fig)
        assert "no suspected memorisation" in text
        assert "(0 of 64 generated volumes below the threshold)" in text and "0.05" in text
    finally:
        pyplot().close(fig)
    out = nearest_figure([], tmp_path / "empty.png", title="t", protocol_note=NOTE)
    _check_png(out, 150, 500)


@pytest.mark.parametrize("change, match", [
    ({"fake": np.zeros((8, 8))}, "'fake' must be a 3D volume"),
    ({"train": np.zeros((2, 8, 8, 8))}, "'train' must be a 3D volume"),
    ({"distance": None}, "'distance'"),
    ({"fake_name": ""}, "'fake_name'"),
])
def test_nearest_bad_input(tmp_path, change, match):
    with pytest.raises(InputError, match=match):
        nearest_figure([_pair(0), {**_pair(1), **change}], tmp_path / "n.png", title="t", protocol_note=NOTE)
    assert not any(tmp_path.iterdir())
    with pytest.raises(InputError, match="max_rows"):
        nearest_figure([_pair(0)], tmp_path / "n.png", title="t", protocol_note=NOTE, max_rows=0)
    with pytest.raises(InputError, match=r"missing field\(s\) \['space'\]"):
        nearest_figure([{k: v for k, v in _pair(0).items() if k != "space"}], tmp_path / "n.png",
                       title="t", protocol_note=NOTE)
