"""Device descriptions carry the CPU model: the same seed is bit-identical only on the same one."""

from __future__ import annotations

import platform

import torch

from wdm.profiling import cpu_model, device_description, model_name_in_cpuinfo

X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model\t\t: 106
model name\t: Intel(R) Xeon(R)   Processor
flags\t\t: fpu vme
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
CPU part\t: 0xd0c

Hardware\t: Neoverse-N1 board
"""


def test_model_name_in_cpuinfo():
    assert model_name_in_cpuinfo(X86.splitlines()) == "Intel(R) Xeon(R) Processor"  # not "model: 106"
    assert model_name_in_cpuinfo(ARM.splitlines()) == "Neoverse-N1 board"
    assert model_name_in_cpuinfo(["processor : 0", "model name :   ", ""]) is None


def test_cpu_description_names_architecture_model_and_threads():
    text = device_description("cpu")
    assert text.startswith(f"{platform.machine()} CPU")
    assert text.endswith(f", {torch.get_num_threads()} threads")
    model = cpu_model()
    assert (f"({model})" in text) if model else ("(" not in text)
