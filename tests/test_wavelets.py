"""3D Haar DWT (WDM Sec. 2): band order, hand-checked values, exact inverse, PyWavelets parity."""

from __future__ import annotations

import logging
import math
import sys

import numpy as np
import pytest
import torch

from wdm import codec
from wdm.wavelets import BANDS, dwt3d, idwt3d

# PyWavelets' dwtn keys: 'a' = low, 'd' = high, one letter per axis in axis order (D, H, W).
PYWT_KEY = {b: b.replace("L", "a").replace("H", "d") for b in BANDS}


def test_band_order_is_the_papers():
    assert BANDS == ("LLL", "LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH")


def test_single_block_by_hand():
    # One 2x2x2 block with values v[d, h, w] = 4d + 2h + w (0..7).
    x = torch.arange(8, dtype=torch.float64).reshape(1, 1, 2, 2, 2)
    c = dwt3d(x)[0, :, 0, 0, 0]
    s = 2 * math.sqrt(2)
    assert c[0].item() == pytest.approx(28 / s)  # LLL = block sum / (2 sqrt 2)
    assert c[1].item() == pytest.approx(-4 / s)  # LLH: width differences, even - odd = -1 each
    assert c[2].item() == pytest.approx(-8 / s)  # LHL: height differences, -2 each
    assert c[4].item() == pytest.approx(-16 / s)  # HLL: depth differences, -4 each
    for k in (3, 5, 6, 7):  # mixed bands of a linear ramp vanish
        assert c[k].item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8, 8), (1, 1, 4, 6, 10), (3, 2, 16, 2, 4)])
def test_inverse_is_exact_float32(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    c = dwt3d(x)
    assert c.shape == (shape[0], 8 * shape[1], shape[2] // 2, shape[3] // 2, shape[4] // 2)
    assert (idwt3d(c) - x).abs().max().item() < 1e-5


def test_matches_pywavelets_dwtn():
    pywt = pytest.importorskip("pywt")
    x = torch.randn(2, 2, 6, 8, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    c = dwt3d(x)
    for b in range(2):
        for ch in range(2):
            ref = pywt.dwtn(x[b, ch].numpy(), "haar")
            for k, band in enumerate(BANDS):
                np.testing.assert_allclose(c[b, 8 * ch + k].numpy(), ref[PYWT_KEY[band]], atol=1e-12)


def test_orthonormal_energy_and_white_noise():
    x = torch.randn(4, 1, 16, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    c = dwt3d(x)
    assert torch.allclose((c**2).sum(), (x**2).sum())  # Parseval
    assert c.std().item() == pytest.approx(1.0, abs=0.02)  # noise stays unit-variance


def test_autograd_flows():
    x = torch.randn(1, 1, 4, 4, 4, requires_grad=True)
    (dwt3d(x) ** 2).sum().backward()
    assert torch.allclose(x.grad, 2 * x.detach(), atol=1e-5)  # orthonormal: d|Wx|^2/dx = 2x


@pytest.mark.parametrize("shape", [(1, 1, 5, 4, 4), (1, 1, 4, 4, 7)])
def test_odd_sizes_raise(shape):
    with pytest.raises(ValueError, match="even"):
        dwt3d(torch.zeros(shape))


def test_wrong_rank_and_channels_raise():
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        dwt3d(torch.zeros(4, 4, 4))
    with pytest.raises(ValueError, match="multiple of 8"):
        idwt3d(torch.zeros(1, 7, 2, 2, 2))


def test_codec_lll_scale_and_clipping():
    x = torch.full((1, 1, 4, 4, 4), 0.5)
    c = codec.encode(x, lll_scale=3.0)
    assert c[0, 0, 0, 0, 0].item() == pytest.approx(0.5 * 2 * math.sqrt(2) / 3.0, rel=1e-6)
    assert torch.allclose(codec.decode(c, 3.0), x, atol=1e-6)
    # Clipping projects out-of-range voxels back to [-1, 1] and leaves in-range ones alone.
    y = torch.linspace(-2, 2, 64).reshape(1, 1, 4, 4, 4)
    clipped = codec.decode(codec.wavelet_clip(codec.encode(y)))
    assert torch.allclose(clipped, y.clamp(-1, 1), atol=1e-6)
    assert codec.LLL_SCALE == 3.0


@pytest.mark.parametrize("threads", [1, 2, 5])
@pytest.mark.parametrize("scratch_bytes", [1 << 20, 200])
def test_fused_cpu_kernel_matches_the_whole_tensor_path(monkeypatch, threads, scratch_bytes):
    # float64 (3, 2, 8, 12, 6): six volumes of 4x6x3 blocks; a 200-byte scratch forces one block
    # column per step, 5 threads more workers than some volumes have block rows.
    from wdm import haar_cpu, wavelets

    x = torch.randn(3, 2, 8, 12, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert wavelets._fused_kernel(x) is None  # 27.6 KB: below KERNEL_BYTES, the whole-tensor path
    ref = dwt3d(x)
    monkeypatch.setattr(wavelets, "KERNEL_BYTES", 0)
    monkeypatch.setattr(haar_cpu, "SCRATCH_BYTES", scratch_bytes)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert wavelets._fused_kernel(x) is haar_cpu
        c = dwt3d(x)
        back = idwt3d(c)
    finally:
        torch.set_num_threads(before)
    assert c.shape == ref.shape and c.is_contiguous()
    assert (c - ref).abs().max().item() < 1e-12
    assert (back - x).abs().max().item() < 1e-12


def test_fused_kernel_is_the_default_for_large_cpu_floats(monkeypatch, caplog):
    from wdm import haar_cpu, wavelets

    big = torch.zeros(1, 1, 64, 64, 64)  # 1 MiB float32
    assert wavelets._fused_kernel(big) is haar_cpu
    assert wavelets._fused_kernel(big.half()) is None and wavelets._fused_kernel(big[..., :32]) is None
    # Without Numba the whole-tensor path takes over, with one warning.
    monkeypatch.setitem(sys.modules, "wdm.haar_cpu", None)
    wavelets._cpu_kernels.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="wdm.wavelets"):
            assert wavelets._fused_kernel(big) is None
        assert "numba not importable" in caplog.text
        x = torch.randn(1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(1))
        without = dwt3d(x)
    finally:
        wavelets._cpu_kernels.cache_clear()
    assert (dwt3d(x) - without).abs().max().item() < 1e-5


def test_an_error_in_a_kernel_thread_is_raised_in_the_caller():
    from wdm import haar_cpu

    seen = []

    def kernel(vol, coef, levels, p0, p1, run, analysis):
        seen.append((p0, p1))
        if p0 > 0:
            raise IndexError(f"rows {p0}..{p1}")

    vol, coef = np.zeros((1, 8, 4, 4), np.float32), np.zeros((1, 8, 4, 2, 2), np.float32)
    with pytest.raises(IndexError, match="rows 2..4"):
        haar_cpu._split(kernel, vol, coef, 1, True, threads=2)
    assert sorted(seen) == [(0, 2), (2, 4)]


@pytest.mark.parametrize("kernel", [False, True])
def test_gradients_are_the_adjoint_and_twice_differentiable(monkeypatch, kernel):
    from wdm import wavelets

    if kernel:
        monkeypatch.setattr(wavelets, "KERNEL_BYTES", 0)
    x = torch.randn(3, 1, 4, 2, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 8, 2, 1, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dwt3d, (x,))
    assert torch.autograd.gradcheck(idwt3d, (c,))
    assert torch.autograd.gradgradcheck(dwt3d, (x,))
    assert torch.autograd.gradgradcheck(idwt3d, (c,))


def test_dtypes_and_non_contiguous_input():
    x = torch.randn(1, 1, 6, 4, 8, dtype=torch.float64)
    assert dwt3d(x).dtype == torch.float64
    assert dwt3d(torch.ones(1, 1, 2, 2, 2, dtype=torch.int64))[0, 0, 0, 0, 0].item() == pytest.approx(
        2 * math.sqrt(2))
    xt = x.transpose(2, 4)  # (1, 1, 8, 4, 6), not contiguous
    assert torch.equal(dwt3d(xt), dwt3d(xt.contiguous()))


def test_inference_mode_then_autograd():
    # The cached Haar matrix may first be built under inference_mode (sampling); training after
    # that in the same process must still differentiate through it.
    from wdm import wavelets

    wavelets._haar_matrix.cache_clear()
    with torch.inference_mode():
        c = dwt3d(torch.randn(1, 1, 4, 4, 4, dtype=torch.float64))
        assert idwt3d(c).shape == (1, 1, 4, 4, 4)
    x = torch.randn(1, 1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    (idwt3d(dwt3d(x) * 2.0) ** 2).sum().backward()
    assert torch.allclose(x.grad, 8 * x.detach())
