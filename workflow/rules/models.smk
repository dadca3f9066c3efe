# Generic training and sampling for every model on the common interface (wdm/model.py).
# A model joins with its own rules/models/<name>.smk calling register_model("<name>").


rule train:
    """Train {model} on data/{dataset}/{res} into results/{dataset}/{res}/{model}/run."""
    input:
        manifest="data/{dataset}/{res}/manifest.csv",
        config=lambda w: model_config(w.model),
    output:
        profile="results/{dataset}/{res}/{model}/run/train_profile.json",
    params:
        run=run_dir,
        data=lambda w: f"data/{w.dataset}/{w.res}",
        launcher=lambda w: train_launcher(w.model),
    wildcard_constraints:
        model=generic_models_regex(),
    log:
        "logs/{dataset}/{res}/{model}/train.log",
    benchmark:
        "benchmarks/{dataset}/{res}/{model}/train.tsv"
    threads: config["threads"]
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=8000,
        runtime=24 * 60,
        gpu=lambda w: train_gpus(w.model),
    shell:
        # training.gpus > 1: torchrun with one DDP process per GPU (common.smk: train_launcher).
        # --resume: a rerun after a killed job continues from its last checkpoint.
        # An out-of-memory run exits 0 with "status": "oom" in its profile; under torchrun the
        # failing rank exits 3 to stop the others, so a recorded OOM also counts as done.
        "{params.launcher} train --config {input.config:q} --data {params.data:q} "
        "--out {params.run:q} --resume --threads {threads} --no-progress > {log:q} 2>&1 "
        "|| grep -qs '\"status\": \"oom\"' {output.profile:q}"


rule sample:
    """Sample evaluation.n_samples volumes from a trained {model}."""
    input:
        profile="results/{dataset}/{res}/{model}/run/train_profile.json",
    output:
        profile="results/{dataset}/{res}/{model}/samples/sample_profile.json",
    params:
        run=run_dir,
        out=lambda w: f"results/{w.dataset}/{w.res}/{w.model}/samples",
        n=config["evaluation"]["n_samples"],
        seed=config["evaluation"]["seed"],
    wildcard_constraints:
        model=generic_models_regex(),
    log:
        "logs/{dataset}/{res}/{model}/sample.log",
    benchmark:
        "benchmarks/{dataset}/{res}/{model}/sample.tsv"
    threads: config["threads"]
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=8000,
        runtime=12 * 60,
    shell:
        "wdm-bench sample --run {params.run:q} --n {params.n} --seed {params.seed} "
        "--out {params.out:q} --threads {threads} --no-progress > {log:q} 2>&1"
