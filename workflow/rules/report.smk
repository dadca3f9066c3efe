# The report gathers what exists. `snakemake --report FILE` (without --report-after-run) builds the
# DAG of the default target and fails on every output flagged report() that is missing, e.g.
# results/table1_vs_paper.csv right after `snakemake results/table1.csv`. In that mode only:
# - report_targets(paths) keeps the paths that exist: the `all` target's figures (figure_targets()
#   is wrapped below) and table1's figure input, so no job of a missing figure is in the DAG;
# - report(path, ...) of a path without wildcards (results/table1_vs_paper.csv, the memory figure)
#   flags it only if it exists. The name is rebound here, before rules/figures.smk and
#   rules/profile.smk are included, so their report() calls get this version too.
# A run that executes jobs (also with --report-after-run) is unchanged: both return their input.
# (Lambdas, not functions: `snakemake --lint` wants functions in rules/common.smk.)
import sys

from snakemake.io import report as _report_flag

_ARGS = sys.argv[1:]
REPORTING = any(a == "--report" or a.startswith("--report=") for a in _ARGS) and (
    "--report-after-run" not in _ARGS
)
report_targets = lambda paths: [p for p in paths if not REPORTING or Path(p).exists()]
report_if_present = lambda value, *args, **kwargs: (
    value
    if REPORTING and "{" not in str(value) and not Path(value).exists()
    else _report_flag(value, *args, **kwargs)
)

if REPORTING:
    _every_figure = figure_targets
    figure_targets = lambda: report_targets(_every_figure())
    globals()["report"] = report_if_present
    # Snakemake writes the report file but does not create its folder (a fresh results/).
    _REPORT_FILE = next((a.split("=", 1)[1] for a in _ARGS if a.startswith("--report=")), None) or next(
        (b for a, b in zip(_ARGS, _ARGS[1:]) if a == "--report" and not b.startswith("-")),
        "report.html",
    )
    Path(_REPORT_FILE).parent.mkdir(parents=True, exist_ok=True)


rule table1:
    """The comparison table: one row per (dataset, resolution, model), plus the real-vs-real reference row."""
    input:
        metrics=lambda w: [
            f"results/{d}/{r}/{m}/metrics.json"
            for d, r in all_cells()
            for m in table_rows()
        ],
        figures=lambda w: report_targets([f"results/figures/samples_{d}_{r}.png" for d, r in all_cells()]),
        pairwise="results/pairwise.csv",  # built beside the table: which differences are significant
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
        pairwise="results/pairwise.csv",
        figures=lambda w: figure_targets(),
        sweeps=lambda w: [f"results/{d}/{r}/fid_vs_steps.csv" for d, r in all_cells() if sweep_models()],
        sanity=lambda w: [f"results/{d}/{r}/sanity.csv" for d, r in sanity_cells()],
    output:
        table="results/readme/table1.csv",
        vs_paper="results/readme/table1_vs_paper.csv",
        pairwise="results/readme/pairwise.csv",
    params:
        copy_sweeps=lambda w: "".join(
            f"cp results/{d}/{r}/fid_vs_steps.csv results/readme/fid_vs_steps_{d}_{r}.csv && "
            for d, r in all_cells()
            if sweep_models()
        ),
        copy_sanity=lambda w: "".join(
            f"cp results/{d}/{r}/sanity.csv results/readme/sanity_{d}_{r}.csv && " for d, r in sanity_cells()
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
        "{params.copy_sweeps} {params.copy_sanity} "
        "cp {input.vs_paper:q} {output.vs_paper:q} && cp {input.pairwise:q} {output.pairwise:q} && "
        "cp {input.table:q} {output.table:q}) "
        "> {log:q} 2>&1"
