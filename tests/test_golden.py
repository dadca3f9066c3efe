"""Golden values of one full deterministic loop (as diffusers pins its scheduler loops).

A seeded 16^3 phantom, the tiny WDM trained for 6 steps and sampled with DDIM-5: the logged losses,
the samples' voxel sum and a few voxels are pinned. A refactor that changes any number on this
path (data, wavelets, network, diffusion, sampler, optimizer, checkpoint round trip, NIfTI output)
fails here loudly. The values were recorded on CPU with torch 2.13 and 2 threads; a deliberate
change of numbers must update them in the same commit and say why.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from wdm.data.prepare import prepare
from wdm.io import load_nifti
from wdm.sample import sample
from wdm.train import train

GOLDEN_CONFIG = {
    "model": "wdm",
    "network": {"preset": "tiny"},
    "diffusion": {"timesteps": 100},
    "training": {"steps": 6, "batch_size": 2, "checkpoint_every": 6, "log_every": 1,
                 "device": "cpu", "seed": 0},
    "sampling": {"sampler": "ddim", "steps": 5, "batch_size": 2, "device": "cpu"},
}
GOLDEN_LOSSES = ["0.127402", "0.128137", "0.125471", "0.123813", "0.120255", "0.1214"]
GOLDEN_SUM = 3854.191995590925
#: (sample, d, h, w) -> value
GOLDEN_VOXELS = {(0, 8, 8, 8): 0.481920063495636, (1, 3, 10, 5): 0.4605322778224945,
                 (0, 0, 0, 0): 0.4941372275352478, (1, 15, 2, 9): 0.4816077947616577}


def test_seeded_train_and_ddim_sample_reproduce_the_pinned_numbers(tmp_path):
    data = prepare("phantom-brain", tmp_path / "data", size=16, n_train=4, n_test=2, seed=0,
                   progress=False)
    train(GOLDEN_CONFIG, data, tmp_path / "run", progress=False)
    sample(tmp_path / "run", 2, 7, tmp_path / "samples", progress=False)

    with open(tmp_path / "run" / "loss.csv") as f:
        assert [row["loss"] for row in csv.DictReader(f)] == GOLDEN_LOSSES
    files = sorted((tmp_path / "samples").glob("sample_*.nii.gz"))
    assert [f.name for f in files] == ["sample_0000.nii.gz", "sample_0001.nii.gz"]
    vols = np.stack([load_nifti(f)[0] for f in files]).astype(np.float64)
    assert vols.shape == (2, 16, 16, 16)
    assert vols.sum() == pytest.approx(GOLDEN_SUM, abs=1e-3)
    for index, value in GOLDEN_VOXELS.items():
        assert vols[index] == pytest.approx(value, abs=1e-6), index
