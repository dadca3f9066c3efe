# Evaluation: real-volume features once per (dataset, res, protocol), then every model against them.
# The `evaluation` section reaches every evaluation as one settings file, validated by the schema.
REAL_STATS = f"results/{{dataset}}/{{res}}/real_features_{config['evaluation']['protocol']}.npz"


rule evaluation_settings:
    """The workflow config's evaluation section, validated and written for the evaluation rules."""
    input:
        extractor=lambda w: extractor_inputs(),
    output:
        SETTINGS,
    params:
        section=json.dumps(config["evaluation"], sort_keys=True),
        # the phantom-seg file that auto: falls back to (rules/extractor.smk), recorded in SETTINGS
        fallback=lambda w, input: " ".join(f"--fallback-weights {shlex_quote(f)}" for f in input.extractor),
    log:
        "logs/evaluation_settings.log",
    benchmark:
        "benchmarks/evaluation_settings.tsv"
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "wdm-bench settings --section evaluation --json {params.section:q} --out {output:q} "
        "{params.fallback} > {log:q} 2>&1"


rule real_features:
    """MedicalNet features of the training split, cached for every model's evaluation."""
    input:
        manifest="data/{dataset}/{res}/manifest.csv",
        settings=SETTINGS,
    output:
        "results/{dataset}/{res}/real_features_{protocol}.npz",
    params:
        real=lambda w: f"data/{w.dataset}/{w.res}/train",
    wildcard_constraints:
        protocol="wdm|hagan",
    log:
        "logs/{dataset}/{res}/real_features_{protocol}.log",
    benchmark:
        "benchmarks/{dataset}/{res}/real_features_{protocol}.tsv"
    threads: config["threads"]
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "wdm-bench real-stats --config {input.settings:q} --real {params.real:q} --out {output:q} "
        "--protocol {wildcards.protocol:q} --threads {threads} > {log:q} 2>&1"


rule evaluate:
    """Every metric of evaluation.n_samples of {model}'s samples; its features; its memorisation check."""
    input:
        samples="results/{dataset}/{res}/{model}/samples/sample_profile.json",
        real_stats=REAL_STATS,
        settings=SETTINGS,
        test_features="results/{dataset}/{res}/reference/features.npz",
    output:
        metrics="results/{dataset}/{res}/{model}/metrics.json",
        features="results/{dataset}/{res}/{model}/features.npz",
        memorisation="results/{dataset}/{res}/{model}/memorisation.csv",
        nearest="results/figures/nearest_{dataset}_{res}_{model}.png",
    params:
        fake=lambda w: f"results/{w.dataset}/{w.res}/{w.model}/samples",
        n_fake="config",
        extra=lambda w, input, output: (
            f"--test-features {input.test_features} --features-out {output.features} "
            f"--memorisation-out {output.memorisation} --nearest-figure {output.nearest}"
        ),
    log:
        "logs/{dataset}/{res}/{model}/evaluate.log",
    benchmark:
        "benchmarks/{dataset}/{res}/{model}/evaluate.tsv"
    threads: config["threads"]
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        EVALUATE_SHELL


rule reference_metrics:
    """The floor: real vs real (train-split features against the test split; MS-SSIM among test volumes)."""
    input:
        real_stats=REAL_STATS,
        manifest="data/{dataset}/{res}/manifest.csv",
        settings=SETTINGS,
    output:
        metrics="results/{dataset}/{res}/reference/metrics.json",
        features="results/{dataset}/{res}/reference/features.npz",
    params:
        fake=lambda w: f"data/{w.dataset}/{w.res}/test",
        n_fake="all",
        extra=lambda w, output: f"--features-out {output.features}",
    log:
        "logs/{dataset}/{res}/reference/evaluate.log",
    benchmark:
        "benchmarks/{dataset}/{res}/reference/evaluate.tsv"
    threads: config["threads"]
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        EVALUATE_SHELL


ruleorder: reference_metrics > evaluate


rule pairwise:
    """Paired bootstrap of the FID and KID differences of every two sets of each (dataset, res)."""
    input:
        real=lambda w: [REAL_STATS.format(dataset=d, res=r) for d, r in all_cells()],
        sets=lambda w: [
            f"results/{d}/{r}/{m}/features.npz" for d, r in all_cells() for m in table_rows()
        ],
        settings=SETTINGS,
    output:
        "results/pairwise.csv",
    params:
        real=lambda w: " ".join(f"{d}/{r}={REAL_STATS.format(dataset=d, res=r)}" for d, r in all_cells()),
        sets=lambda w: " ".join(
            f"{d}/{r}/{m}=results/{d}/{r}/{m}/features.npz"
            for d, r in all_cells()
            for m in table_rows()
        ),
    log:
        "logs/pairwise.log",
    benchmark:
        "benchmarks/pairwise.tsv"
    threads: config["threads"]
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "wdm-bench pairwise --config {input.settings:q} --real {params.real} --set {params.sets} "
        "--out {output:q} --threads {threads} --no-progress > {log:q} 2>&1"


rule fid_vs_n:
    """FID against 1/N of every set of a (dataset, res), with its FID-infinity fit."""
    input:
        metrics=lambda w: [f"results/{w.dataset}/{w.res}/{m}/metrics.json" for m in table_rows()],
    output:
        "results/figures/fid_vs_n_{dataset}_{res}.png",
    log:
        "logs/{dataset}/{res}/fid_vs_n.log",
    benchmark:
        "benchmarks/{dataset}/{res}/fid_vs_n.tsv"
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "wdm-bench fid-vs-n --metrics {input.metrics:q} --out {output:q} > {log:q} 2>&1"
