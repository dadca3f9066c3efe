# Figures beyond the table, the paper comparison and the aggregate targets:
#   results/figures/samples_{dataset}_{res}_{model}.png   real vs one model, three planes
#   results/figures/loss_{dataset}_{res}.png              training losses, one panel per model
#   results/figures/fid_vs_steps_{dataset}_{res}.png      KID and FID against sampling steps (sweep)
#   results/table1_vs_paper.csv                           ours beside the paper's reported values
# `snakemake --cores 8 figures` builds every figure; `snakemake --cores 8` (rule all, in the Snakefile)
# builds the table, the comparison and the figures; `snakemake --report results/report.html` collects them.
# Helpers (sweep_models, figure_targets, ...) live in rules/common.smk.
_FIG = config["figures"]
_SWEEP = _FIG["sweep"]


rule figures:
    """Every figure under results/figures/ (not the table: `table1` stays as fast as before)."""
    input:
        lambda w: figure_targets(),


rule sample_figure_model:
    """Mid-slices in three planes: real test volumes beside one model's samples."""
    input:
        manifest="data/{dataset}/{res}/manifest.csv",
        samples="results/{dataset}/{res}/{model}/samples/sample_profile.json",
    output:
        report(
            "results/figures/samples_{dataset}_{res}_{model}.png",
            caption="../report/samples_model.rst",
            category="Samples",
            subcategory="{dataset} {res}^3",
            labels={"model": "{model}", "figure": "samples"},
        ),
    params:
        real=lambda w: f"data/{w.dataset}/{w.res}/test",
        fake=lambda w: f"{w.model}=results/{w.dataset}/{w.res}/{w.model}/samples",
        n=_FIG["n_per_source"],
        title=lambda w: f"{w.model} on {w.dataset} {w.res}^3: real (test split) vs generated",
    wildcard_constraints:
        model=models_regex(),
    log:
        "logs/figures/samples_{dataset}_{res}_{model}.log",
    benchmark:
        "benchmarks/figures/samples_{dataset}_{res}_{model}.tsv"
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "wdm-bench figure --real {params.real:q} --fake {params.fake:q} --out {output:q} "
        "--n {params.n} --title {params.title:q} > {log:q} 2>&1"


ruleorder: sample_figure_model > sample_figure


rule loss_figure:
    """Training loss curves (raw faint, smoothed solid), one panel per model."""
    input:
        profiles=lambda w: [
            f"results/{w.dataset}/{w.res}/{m}/run/train_profile.json" for m in active_models()
        ],
    output:
        report(
            "results/figures/loss_{dataset}_{res}.png",
            caption="../report/loss.rst",
            category="Training",
            subcategory="{dataset} {res}^3",
            labels={"figure": "loss curves"},
        ),
    params:
        runs=lambda w: [f"{m}=results/{w.dataset}/{w.res}/{m}/run" for m in active_models()],
        smoothing=_FIG["loss_smoothing"],
        title=lambda w: f"training loss, {w.dataset} {w.res}^3",
    log:
        "logs/figures/loss_{dataset}_{res}.log",
    benchmark:
        "benchmarks/figures/loss_{dataset}_{res}.tsv"
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "wdm-bench curves loss --run {params.runs:q} --smoothing {params.smoothing} "
        "--out {output:q} --title {params.title:q} > {log:q} 2>&1"


rule sample_steps:
    """One point of the sweep: figures.sweep.n_samples volumes with {sampler} and {steps} steps."""
    input:
        profile="results/{dataset}/{res}/{model}/run/train_profile.json",
    output:
        profile="results/{dataset}/{res}/{model}/steps/{sampler}_{steps}/sample_profile.json",
    params:
        run=run_dir,
        out=lambda w: f"results/{w.dataset}/{w.res}/{w.model}/steps/{w.sampler}_{w.steps}",
        n=_SWEEP["n_samples"],
        seed=config["evaluation"]["seed"],
        sampler=lambda w: (
            f"--sampler {w.sampler} --steps {w.steps} --batch-size {sweep_batch_size(w.model)}"
        ),
    wildcard_constraints:
        model=models_regex(),
        sampler="ddpm|ddim",
        steps="[0-9]+",
    log:
        "logs/{dataset}/{res}/{model}/steps/sample_{sampler}_{steps}.log",
    benchmark:
        "benchmarks/{dataset}/{res}/{model}/steps/sample_{sampler}_{steps}.tsv"
    threads: config["threads"]
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=8000,
        runtime=12 * 60,
    shell:
        SAMPLE_SHELL


rule evaluate_steps:
    """FID / MS-SSIM of one sweep point against the cached real features."""
    input:
        samples="results/{dataset}/{res}/{model}/steps/{sampler}_{steps}/sample_profile.json",
        real_stats=REAL_STATS,
        settings=SETTINGS,
    output:
        metrics="results/{dataset}/{res}/{model}/steps/{sampler}_{steps}/metrics.json",
    params:
        fake=lambda w: f"results/{w.dataset}/{w.res}/{w.model}/steps/{w.sampler}_{w.steps}",
        n_fake=_SWEEP["n_samples"],
        extra="",
    wildcard_constraints:
        model=models_regex(),
        sampler="ddpm|ddim",
        steps="[0-9]+",
    log:
        "logs/{dataset}/{res}/{model}/steps/evaluate_{sampler}_{steps}.log",
    benchmark:
        "benchmarks/{dataset}/{res}/{model}/steps/evaluate_{sampler}_{steps}.tsv"
    threads: config["threads"]
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        EVALUATE_SHELL


ruleorder: evaluate_steps > evaluate


rule fid_vs_steps:
    """Collect the sweep into a CSV and plot KID and FID (with CIs) and s/volume against steps."""
    input:
        metrics=lambda w: [
            f"{sweep_dir(w.dataset, w.res, m, p)}/metrics.json"
            for m in sweep_models()
            for p in _SWEEP["points"]
        ],
    output:
        csv=report(
            "results/{dataset}/{res}/fid_vs_steps.csv",
            caption="../report/fid_vs_steps_csv.rst",
            category="Sampling steps",
            subcategory="{dataset} {res}^3",
            labels={"table": "KID and FID against steps"},
        ),
        png=report(
            "results/figures/fid_vs_steps_{dataset}_{res}.png",
            caption="../report/fid_vs_steps.rst",
            category="Sampling steps",
            subcategory="{dataset} {res}^3",
            labels={"figure": "KID and FID against steps"},
        ),
    params:
        title=lambda w: f"{w.dataset} {w.res}^3",
    log:
        "logs/figures/fid_vs_steps_{dataset}_{res}.log",
    benchmark:
        "benchmarks/figures/fid_vs_steps_{dataset}_{res}.tsv"
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "wdm-bench curves fid-steps --metrics {input.metrics:q} --csv {output.csv:q} "
        "--out {output.png:q} --title {params.title:q} > {log:q} 2>&1"


rule table1_vs_paper:
    """results/table1.csv beside the paper's reported values (results/paper_reference.csv)."""
    input:
        table="results/table1.csv",
        reference=paper_reference(),
    output:
        report(
            "results/table1_vs_paper.csv",
            caption="../report/table1_vs_paper.rst",
            category="Tables",
            labels={"table": "table1 vs paper"},
        ),
    params:
        pairs=" ".join(
            shlex_quote(f"{d}={c['paper_dataset']}")
            for d, c in config["datasets"].items()
            if c.get("paper_dataset")
        ),
    log:
        "logs/table1_vs_paper.log",
    benchmark:
        "benchmarks/table1_vs_paper.tsv"
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "wdm-bench compare --table {input.table:q} --reference {input.reference:q} "
        "--paper-dataset {params.pairs} --out {output:q} > {log:q} 2>&1"
