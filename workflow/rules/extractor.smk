# The embedded phantom-seg feature extractor: a MedicalNet-architecture ResNet-10 trained by
# segmentation of phantom-brain anatomy (wdm-bench train-extractor; NOT MedicalNet). The evaluation
# uses it where `auto:<name>` finds no MedicalNet weights and evaluation.fallback is phantom-seg.
from eval.extractors import uses_phantom_seg

PHANTOM_SEG = "results/extractors/phantom-seg-resnet10.pt"
PHANTOM_SEG_RECORD = "results/extractors/phantom-seg-resnet10.json"
# [PHANTOM_SEG] when the evaluation will use it (weights "phantom-seg", or "auto:<name>" whose
# MedicalNet file is not found locally, with fallback phantom-seg and no fallback_weights), else [].
extractor_inputs = lambda: [PHANTOM_SEG] if uses_phantom_seg(config["evaluation"]) else []


rule phantom_seg_extractor:
    """The phantom-seg extractor checkpoint and its JSON record (held-out Dice per class)."""
    output:
        checkpoint=PHANTOM_SEG,
        record=PHANTOM_SEG_RECORD,
    log:
        "logs/extractors/phantom_seg_extractor.log",
    benchmark:
        "benchmarks/extractors/phantom_seg_extractor.tsv"
    threads: config["threads"]
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "wdm-bench train-extractor --out {output.checkpoint:q} --threads {threads} --no-progress "
        "> {log:q} 2>&1"
