# Evaluation: real-volume features once per (dataset, res, protocol), then every model against them.


# Command-line options from config["evaluation"]: shared by real-stats and evaluate (extractor),
# and of evaluate only (MS-SSIM, bootstrap).
_EV = config["evaluation"]
EVAL_EXTRACTOR_OPTS = " ".join(
    shlex_quote(str(o))
    for o in [
        "--weights", _EV["weights"] or "none",
        "--depth", _EV["depth"],
        "--seed", _EV["seed"],
        "--batch-size", _EV["batch_size"],
    ]
    + (["--n-real", _EV["n_real"]] if _EV.get("n_real") else [])
)
EVAL_SCORE_OPTS = " ".join(
    shlex_quote(str(o))
    for o in ["--kernel-size", _EV["kernel_size"], "--n-bootstrap", _EV["n_bootstrap"]]
    + (["--max-pairs", _EV["max_pairs"]] if _EV.get("max_pairs") else [])
)
REAL_STATS = f"results/{{dataset}}/{{res}}/real_features_{_EV['protocol']}.npz"


rule real_features:
    """MedicalNet features of the training split, cached for every model's evaluation."""
    input:
        manifest="data/{dataset}/{res}/manifest.csv",
    output:
        "results/{dataset}/{res}/real_features_{protocol}.npz",
    params:
        real=lambda w: f"data/{w.dataset}/{w.res}/train",
        opts=EVAL_EXTRACTOR_OPTS,
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
        "wdm-bench real-stats --real {params.real:q} --out {output:q} {params.opts} "
        "--protocol {wildcards.protocol:q} --threads {threads} > {log:q} 2>&1"


rule evaluate:
    """FID, MMD (MedicalNet features) and MS-SSIM diversity of one model's samples."""
    input:
        samples="results/{dataset}/{res}/{model}/samples/sample_profile.json",
        real_stats=REAL_STATS,
    output:
        metrics="results/{dataset}/{res}/{model}/metrics.json",
    params:
        fake=lambda w: f"results/{w.dataset}/{w.res}/{w.model}/samples",
        opts=EVAL_EXTRACTOR_OPTS,
        score=EVAL_SCORE_OPTS,
        protocol=_EV["protocol"],
        n_fake=config["evaluation"]["n_samples"],
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
        "wdm-bench evaluate --real-stats {input.real_stats:q} --fake {params.fake:q} "
        "--out {output.metrics:q} --protocol {params.protocol:q} {params.opts} {params.score} "
        "--n-fake {params.n_fake} --threads {threads} > {log:q} 2>&1"


rule reference_metrics:
    """The floor: real vs real (train-split features against the test split; MS-SSIM among test volumes)."""
    input:
        real_stats=REAL_STATS,
        manifest="data/{dataset}/{res}/manifest.csv",
    output:
        metrics="results/{dataset}/{res}/reference/metrics.json",
    params:
        fake=lambda w: f"data/{w.dataset}/{w.res}/test",
        opts=EVAL_EXTRACTOR_OPTS,
        score=EVAL_SCORE_OPTS,
        protocol=_EV["protocol"],
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
        "wdm-bench evaluate --real-stats {input.real_stats:q} --fake {params.fake:q} "
        "--out {output.metrics:q} --protocol {params.protocol:q} {params.opts} {params.score} "
        "--threads {threads} > {log:q} 2>&1"


ruleorder: reference_metrics > evaluate
