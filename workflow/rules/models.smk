# Training and sampling for every model on the common contract (wdm/model.py), one launcher each.
# A model joins with its own rules/models/<name>.smk calling register_model("<name>"); a model
# trained in stages (the 3D LDM) names them: each earlier stage S trains into .../{model}/S, the
# last one into .../{model}/run, and `wdm-bench train --stage` derives each stage's run config.
check_model_configs()


rule train:
    """Train {model} (its last stage) on data/{dataset}/{res} into results/{dataset}/{res}/{model}/run."""
    input:
        unpack(train_inputs),
    output:
        profile="results/{dataset}/{res}/{model}/run/train_profile.json",
    params:
        run=run_dir,
        data=lambda w: f"data/{w.dataset}/{w.res}",
        launcher=lambda w: train_launcher(w.model),
        stage=lambda w: stage_flag(w.model),
    wildcard_constraints:
        model=models_regex(),
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
        TRAIN_SHELL


rule train_stage:
    """An earlier training stage of a staged {model} into results/{dataset}/{res}/{model}/{stage}."""
    input:
        unpack(train_inputs),
    output:
        profile="results/{dataset}/{res}/{model}/{stage}/train_profile.json",
    params:
        run=lambda w: f"results/{w.dataset}/{w.res}/{w.model}/{w.stage}",
        data=lambda w: f"data/{w.dataset}/{w.res}",
        launcher=lambda w: train_launcher(w.model, w.stage),
        stage=lambda w: stage_flag(w.model, w.stage),
    wildcard_constraints:
        model=models_regex(STAGES),
        stage=models_regex(sorted({s for m in STAGES for s in earlier_stages(m)})),
    log:
        "logs/{dataset}/{res}/{model}/train_{stage}.log",
    benchmark:
        "benchmarks/{dataset}/{res}/{model}/train_{stage}.tsv"
    threads: config["threads"]
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=8000,
        runtime=24 * 60,
        gpu=lambda w: train_gpus(w.model),
    shell:
        TRAIN_SHELL


rule sample:
    """Sample evaluation.n_samples volumes from a trained {model} with its run config's sampler."""
    input:
        profile="results/{dataset}/{res}/{model}/run/train_profile.json",
    output:
        profile="results/{dataset}/{res}/{model}/samples/sample_profile.json",
    params:
        run=run_dir,
        out=lambda w: f"results/{w.dataset}/{w.res}/{w.model}/samples",
        n=config["evaluation"]["n_samples"],
        seed=config["evaluation"]["seed"],
        sampler="",
    wildcard_constraints:
        model=models_regex(),
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
        SAMPLE_SHELL


rule sample_initial:
    """evaluation.n_samples volumes from {model}'s untrained initialisation (config untrained_rows)."""
    input:
        profile="results/{dataset}/{res}/{model}/run/train_profile.json",
    output:
        profile="results/{dataset}/{res}/{model}-init/samples/sample_profile.json",
    params:
        run=run_dir,
        out=lambda w: f"results/{w.dataset}/{w.res}/{w.model}-init/samples",
        n=config["evaluation"]["n_samples"],
        seed=config["evaluation"]["seed"],
        sampler="--initial",
    wildcard_constraints:
        model=models_regex(),
    log:
        "logs/{dataset}/{res}/{model}-init/sample.log",
    benchmark:
        "benchmarks/{dataset}/{res}/{model}-init/sample.tsv"
    threads: config["threads"]
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=8000,
        runtime=12 * 60,
    shell:
        SAMPLE_SHELL
