"""The ``train-extractor`` sub-command of ``wdm-bench``: the embedded phantom-seg feature extractor.

Thin like :mod:`wdm.cli`: parse, check the output, call :func:`wdm.extractor.train_extractor`
(a MedicalNet ResNet-10, Chen et al. 2019, trained by segmentation of phantom-brain anatomy).
"""

from __future__ import annotations

import argparse
import logging

from wdm.cli_checks import Command, at_least, set_threads

__all__ = ["EXTRACTOR_COMMANDS"]

log = logging.getLogger("wdm")


#: the flags that reach :func:`wdm.extractor.train_extractor` (None = its default).
_KNOBS = ("seed", "size", "n_volumes", "steps", "batch_size")


def _cmd_train_extractor(a: argparse.Namespace) -> None:
    from wdm.extractor import record_path, train_extractor
    from wdm.io import check_output

    check_output(a.out)
    check_output(record_path(a.out), "--out (its JSON record)", inputs=(a.out,))
    set_threads(a.threads)
    knobs = {k: getattr(a, k) for k in _KNOBS if getattr(a, k) is not None}
    train_extractor(a.out, progress=not a.no_progress, **knobs)


def _args_train_extractor(s: argparse.ArgumentParser) -> None:
    # defaults (None here) live in wdm.extractor.DEFAULTS: parsing must not import torch
    s.add_argument("--out", required=True, help="checkpoint file (.pt); its JSON record is written beside")
    s.add_argument("--seed", type=at_least(0), default=None,
                   help="phantom i is drawn with seed + i (default 7000000)")
    s.add_argument("--size", type=at_least(16), default=None, help="phantom cube side (default 32)")
    s.add_argument("--n-volumes", type=at_least(1), default=None,
                   help="training phantoms (default 128; 16 more are held out for the Dice record)")
    s.add_argument("--steps", type=at_least(1), default=None, help="optimiser steps (default 50)")
    s.add_argument("--batch-size", type=at_least(1), default=None, help="default 8")
    s.add_argument("--threads", type=at_least(1), default=None, help="torch CPU threads")
    s.add_argument("--no-progress", action="store_true")


EXTRACTOR_COMMANDS: tuple[Command, ...] = (
    Command("train-extractor", "train the phantom-seg feature extractor (ResNet-10 by segmentation "
            "of phantom-brain anatomy; NOT MedicalNet)", _args_train_extractor, _cmd_train_extractor),
)
