rule table1:
    """The comparison table: one row per (dataset, resolution, model), plus the real-vs-real reference row."""
    input:
        metrics=lambda w: [
            f"results/{d}/{r}/{m}/metrics.json"
            for d, r in all_cells()
            for m in ["reference", *active_models()]
        ],
        figures=lambda w: [f"results/figures/samples_{d}_{r}.png" for d, r in all_cells()],
    output:
        report(
            "results/table1.csv",
            caption="../report/table1.rst",
            category="Tables",
            labels={"table": "table1"},
        ),
    log:
        "logs/table1.log",
    benchmark:
        "benchmarks/table1.tsv"
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "wdm-bench table --metrics {input.metrics:q} --out {output:q} > {log:q} 2>&1"


rule sample_figure:
    """Mid-slices in three planes of a few samples of every model beside real volumes."""
    input:
        manifest="data/{dataset}/{res}/manifest.csv",
        samples=lambda w: [
            f"results/{w.dataset}/{w.res}/{m}/samples/sample_profile.json" for m in active_models()
        ],
    output:
        report(
            "results/figures/samples_{dataset}_{res}.png",
            caption="../report/samples.rst",
            category="Samples",
            subcategory="{dataset} {res}^3",
            labels={"model": "all models", "figure": "samples"},
        ),
    params:
        real=lambda w: f"data/{w.dataset}/{w.res}/test",
        fake=lambda w: [
            f"{m}=results/{w.dataset}/{w.res}/{m}/samples" for m in active_models()
        ],
        title=lambda w: f"{w.dataset} {w.res}^3: real (test split) vs generated",
    log:
        "logs/figures/samples_{dataset}_{res}.log",
    benchmark:
        "benchmarks/figures/samples_{dataset}_{res}.tsv"
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "wdm-bench figure --real {params.real:q} --fake {params.fake:q} --out {output:q} "
        "--title {params.title:q} > {log:q} 2>&1"


rule readme_results:
    """Copy the tables and figures the README cites into results/readme/ (kept in git).

    results/table1.csv itself is not committed: a committed copy would make Snakemake think the
    table is up to date on a fresh clone and skip the whole run.
    """
    input:
        table="results/table1.csv",
        vs_paper="results/table1_vs_paper.csv",
        figures=lambda w: figure_targets(),
        sweeps=lambda w: [f"results/{d}/{r}/fid_vs_steps.csv" for d, r in all_cells() if sweep_models()],
    output:
        table="results/readme/table1.csv",
        vs_paper="results/readme/table1_vs_paper.csv",
    params:
        copy_sweeps=lambda w: "".join(
            f"cp results/{d}/{r}/fid_vs_steps.csv results/readme/fid_vs_steps_{d}_{r}.csv && "
            for d, r in all_cells()
            if sweep_models()
        ),
    log:
        "logs/readme_results.log",
    benchmark:
        "benchmarks/readme_results.tsv"
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=100,
        runtime=5,
    shell:
        "(mkdir -p results/readme/figures && cp {input.figures:q} results/readme/figures/ && "
        "{params.copy_sweeps} "
        "cp {input.vs_paper:q} {output.vs_paper:q} && cp {input.table:q} {output.table:q}) "
        "> {log:q} 2>&1"
