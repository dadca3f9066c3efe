# Metric sanity suite: every metric of the test split under controlled defects (noise, blur, gamma,
# elastic, slab seams, checkerboard, mode collapse, memorisation) against the training split.
# Every extractor available: the evaluation's own (evaluation.weights, with its fallback) and the
# untrained ResNet ("none"), side by side. extractor_inputs() (rules/extractor.smk) lists the
# extractor checkpoints the evaluation uses.
_SANITY_SPECS = list(dict.fromkeys([str(config["evaluation"]["weights"] or "none"), "none"]))


rule sanity:
    """Does each metric respond to real defects? Spearman ρ and real-vs-real interval per metric."""
    input:
        manifest="data/{dataset}/{res}/manifest.csv",
        settings=SETTINGS,
        extractors=lambda w: extractor_inputs(),
    output:
        csv="results/{dataset}/{res}/sanity.csv",
        figure="results/figures/sanity_{dataset}_{res}.png",
    params:
        data=lambda w: f"data/{w.dataset}/{w.res}",
        out=lambda w: f"results/{w.dataset}/{w.res}",
        extractors=" ".join(f"--extractor {shlex_quote(s)}" for s in _SANITY_SPECS),
    log:
        "logs/{dataset}/{res}/sanity.log",
    benchmark:
        "benchmarks/{dataset}/{res}/sanity.tsv"
    threads: config["threads"]
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "wdm-bench sanity --data {params.data:q} --out {params.out:q} --figure {output.figure:q} "
        "--settings {input.settings:q} {params.extractors} --threads {threads} --no-progress "
        "> {log:q} 2>&1"
