"""Our 3D MS-SSIM against MONAI's ``MultiScaleSSIMMetric`` run in float64 (Wang et al. 2003).

MONAI casts its inputs to float32 in ``compute_ssim_and_cs``; patching its ``convert_data_type``
keeps them float64. Its Gaussian window is still built in float32 and sums to 1 + 7.7e-8; on the
near-flat volumes below that alone moves the mean pairwise MS-SSIM by 4e-6 (1.6e-5 for single
pairs; 8e-6 / 2.4e-5 at 112³), always in one direction. So: ``monai_window=True`` must match that
reference, and our default (exactly normalised) window must match MONAI with a float64 window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from eval.msssim import MS_SSIM_WEIGHTS, _gaussian_1d, max_ms_ssim_scales, ms_ssim, pairwise_ms_ssim

pytest.importorskip("monai")

TOL = 1e-6
Monai = Callable[[torch.Tensor, torch.Tensor, int, bool], torch.Tensor]


def _fields(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n, 1, size³) float32 in [0, 1]: levels 0.2 … 0.8 plus 0.05 · a smooth random field in [0, 1].

    Near-flat regions of different intensity, where the contrast-structure term cs is most
    sensitive to the window's normalisation (σ² = E[x²] - E[x]² vs c2 = 9e-4).
    """
    rng = np.random.default_rng(seed)
    out = []
    for level in np.linspace(0.2, 0.8, n):
        f = ndi.gaussian_filter(rng.standard_normal((size,) * 3), 4.0, mode="wrap")
        out.append(level + 0.05 * (f - f.min()) / (f.max() - f.min()))
    return torch.from_numpy(np.stack(out).astype(np.float32)).unsqueeze(1)


def _weights(scales: int) -> list[float]:
    """Our default weights for ``scales`` scales, to pass to MONAI (which has no default for < 5)."""
    w = list(MS_SSIM_WEIGHTS[:scales])
    return w if scales == len(MS_SSIM_WEIGHTS) else [v / sum(w) for v in w]


@pytest.fixture()
def monai64(monkeypatch: pytest.MonkeyPatch) -> Iterator[Monai]:
    """MONAI's MS-SSIM (3D, kernel 7, σ 1.5, data range 1) in float64: ``f(x, y, scales, window64)``.

    ``window64=False`` keeps MONAI's float32-built window, ``True`` builds it in float64 too.
    """
    import monai.metrics.regression as mr
    from monai.metrics import MultiScaleSSIMMetric

    monkeypatch.setattr(mr, "convert_data_type", lambda v, output_type=None, dtype=None: (v,))
    default = torch.get_default_dtype()

    def metric(x: torch.Tensor, y: torch.Tensor, scales: int, window64: bool) -> torch.Tensor:
        m = MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=7, kernel_sigma=1.5,
                                 weights=_weights(scales), reduction="none")
        torch.set_default_dtype(torch.float64 if window64 else default)
        try:
            out = m(x.double(), y.double()).flatten()
        finally:
            torch.set_default_dtype(default)
        assert out.dtype == torch.float64, "MONAI no longer computes in float64 under the patch"
        return out

    yield metric


def _check_pairwise(vols: torch.Tensor, monai64: Monai) -> None:
    """Mean (and each value) of all-pairs :func:`pairwise_ms_ssim` vs MONAI float64, to 1e-6."""
    scales = max_ms_ssim_scales(vols.shape[2:], 7)
    for monai_window in (True, False):
        res = pairwise_ms_ssim(vols, kernel_size=7, sigma=1.5, data_range=1.0, return_values=True,
                               monai_window=monai_window)
        assert res["scales"] == scales and res["n_pairs"] == res["n_pairs_total"]
        ref = torch.cat([monai64(vols[i:i + 1], vols[j:j + 1], scales, not monai_window)
                         for i, j in res["pairs"]])
        gap = abs(res["mean"] - float(ref.mean()))
        assert gap < TOL, f"monai_window={monai_window}: mean differs from MONAI by {gap:.3e}"
        np.testing.assert_allclose(res["values"], ref.numpy(), rtol=0, atol=TOL)


def test_monai_window_matches_monai_kernel():
    from monai.metrics.regression import _gaussian_kernel

    ref = _gaussian_kernel(3, 1, (7, 7, 7), (1.5, 1.5, 1.5))[0, 0].double()
    g = _gaussian_1d(7, 1.5, monai_window=True)
    ours = g[:, None, None] * g[None, :, None] * g[None, None, :]
    assert float(ours.sum()) == pytest.approx(float(ref.sum()), rel=0, abs=1e-15)
    assert float((ours - ref).abs().max()) < 2e-9
    assert float(_gaussian_1d(7, 1.5).sum()) == pytest.approx(1.0, abs=1e-15)


def test_constant_volumes_show_the_window_sum(monai64: Monai):
    # σ = 0 exactly: cs = 1 with a window summing to 1; MONAI's 1 + ε gives 1 + ε (a - b)² / c2.
    a, b, c1 = 0.3, 0.6, 0.01**2
    x, y = (torch.full((1, 1, 8, 8, 8), v, dtype=torch.float64) for v in (a, b))
    exact = (2 * a * b + c1) / (a * a + b * b + c1)
    assert float(ms_ssim(x, y, scales=1)) == pytest.approx(exact, rel=1e-12)
    assert float(monai64(x, y, 1, True)) == pytest.approx(exact, rel=1e-12)
    ours_monai = float(ms_ssim(x, y, scales=1, monai_window=True))
    assert ours_monai == pytest.approx(float(monai64(x, y, 1, False)), rel=0, abs=1e-9)
    assert ours_monai / exact - 1 == pytest.approx(7.68e-8 * (a - b) ** 2 / 0.03**2, rel=0.01)


def test_pairwise_ms_ssim_matches_monai_float64(monai64: Monai):
    vols = _fields(4, 32)
    assert max_ms_ssim_scales(vols.shape[2:], 7) == 3
    _check_pairwise(vols, monai64)


def test_ms_ssim_matches_monai_float64(monai64: Monai):
    vols = _fields(4, 32, seed=1)
    x, y = vols[[0, 1, 2]], vols[[3, 3, 0]]
    for monai_window in (True, False):
        gap = float((ms_ssim(x, y, scales=3, monai_window=monai_window)
                     - monai64(x, y, 3, not monai_window)).abs().max())
        assert gap < TOL, f"monai_window={monai_window}: ms_ssim differs from MONAI by {gap:.3e}"


@pytest.mark.slow
def test_pairwise_ms_ssim_matches_monai_float64_112(monai64: Monai):
    vols = _fields(3, 112)
    assert max_ms_ssim_scales(vols.shape[2:], 7) == 5
    _check_pairwise(vols, monai64)
