"""Counting a training step's memory without allocating it (wdm/activation_memory.py)."""

from __future__ import annotations

import pytest
import torch

from wdm.activation_memory import count_training_memory
from wdm.config import resolve_run_config


def _cfg(model: str = "wdm") -> dict:
    return resolve_run_config({"model": model, "network": {"preset": "tiny"},
                               "training": {"device": "cpu"}})


def test_parameter_state_is_four_copies_and_activations_scale_with_voxels():
    a = count_training_memory(_cfg(), 16)
    b = count_training_memory(_cfg(), 32)
    assert a["param_state_gb"] == pytest.approx(4 * 4 * a["n_parameters"] / 1e9)
    assert a["param_state_gb"] == b["param_state_gb"] and a["n_saved"] == b["n_saved"] > 10
    # every activation is 8x larger at twice the side; only scalar/statistics tensors do not grow
    assert 7.0 < b["saved_activations_gb"] / a["saved_activations_gb"] <= 8.0
    assert a["estimate_gb"] == pytest.approx(a["saved_activations_gb"] + a["param_state_gb"])


def test_count_matches_what_autograd_keeps():
    """The dropping count equals the bytes of saved storages when autograd really keeps them."""
    cfg = _cfg("ddpm3d")
    counted = count_training_memory(cfg, 16)["saved_activations_gb"]
    from wdm.probe import _build

    torch.manual_seed(0)
    model, _ = _build(cfg, (16, 16, 16))
    params = {p.untyped_storage().data_ptr() for p in model.network.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            kept[s.data_ptr()] = s.nbytes()  # all alive until backward: addresses are unique
        return t

    gen = torch.Generator().manual_seed(0)
    x = torch.rand((1, 1, 16, 16, 16), generator=gen) * 2 - 1
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model.loss(x, gen)
    assert counted * 1e9 == pytest.approx(sum(kept.values()), rel=0.02)
    loss.backward()  # the kept graph is a real one


def test_models_with_their_own_step_are_refused():
    cfg = resolve_run_config({"model": "hagan", "hagan": {"preset": "tiny"}})
    with pytest.raises(ValueError, match="training_step"):
        count_training_memory(cfg, 16)
