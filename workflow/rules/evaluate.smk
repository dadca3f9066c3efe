# Evaluation: real-volume features once per (dataset, res, protocol), then every model against them.
# The `evaluation` section reaches every evaluation as one settings file, validated by the schema.
REAL_STATS = f"results/{{dataset}}/{{res}}/real_features_{config['evaluation']['protocol']}.npz"


rule evaluation_settings:
    """The workflow config's evaluation section, validated and written for the evaluation rules."""
    output:
        SETTINGS,
    params:
        section=json.dumps(config["evaluation"], sort_keys=True),
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
        "> {log:q} 2>&1"


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
    """FID, MMD (MedicalNet features) and MS-SSIM diversity of evaluation.n_samples of {model}'s samples."""
    input:
        samples="results/{dataset}/{res}/{model}/samples/sample_profile.json",
        real_stats=REAL_STATS,
        settings=SETTINGS,
    output:
        metrics="results/{dataset}/{res}/{model}/metrics.json",
    params:
        fake=lambda w: f"results/{w.dataset}/{w.res}/{w.model}/samples",
        n_fake="config",
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
    params:
        fake=lambda w: f"data/{w.dataset}/{w.res}/test",
        n_fake="all",
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
