"""One JSON schema validates the workflow config and the run configs, with defaults filled."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wdm.config import load_run_config, load_workflow_config, resolve_run_config, validate
from wdm.io import InputError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_validate():
    wf = load_workflow_config(REPO / "config" / "config.yaml")
    assert wf["datasets"]["phantom-brain"]["resolutions"] == [32]
    assert wf["evaluation"]["kernel_size"] == 7
    for path in (REPO / "config" / "models").glob("*.yaml"):
        cfg = load_run_config(path)
        assert cfg["model"] == path.stem


def test_run_defaults_follow_the_paper():
    cfg = resolve_run_config({})
    d = cfg["diffusion"]
    assert (d["timesteps"], d["beta_start"], d["beta_end"], d["lll_scale"]) == (1000, 1e-4, 0.02, 3.0)
    assert d["wavelet_clip"] is True and d["schedule"] == "linear"
    assert cfg["training"]["weight_decay"] == 0.0


@pytest.mark.parametrize("raw, needle", [
    ({"training": {"lr": "fast"}}, "training.lr"),
    ({"training": {"batch": 2}}, "'batch' was unexpected"),
    ({"sampling": {"sampler": "euler"}}, "sampling.sampler"),
    ({"diffusion": {"lll_scale": 0}}, "diffusion.lll_scale"),
    ({"unknown": 1}, "'unknown' was unexpected"),
])
def test_bad_run_configs_name_the_field(raw, needle, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match="c.yaml") as exc:
        load_run_config(path)
    assert needle in str(exc.value)


def test_workflow_config_errors():
    with pytest.raises(InputError, match="resolutions"):
        validate({"datasets": {"phantom-brain": {"resolutions": [33]}}})
    with pytest.raises(InputError, match="datasets"):
        validate({})


def test_schema_is_shared_with_snakemake():
    link = REPO / "workflow" / "schemas" / "config.schema.yaml"
    assert link.resolve() == (REPO / "wdm" / "schema" / "config.schema.yaml").resolve()
