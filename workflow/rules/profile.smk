# Memory and time against resolution: one isolated probe per active model x mode x
# resolution (workflow config `profiling`), collected into a CSV and a two-panel figure:
#   results/profile/{model}/{mode}_{res}.json     peak memory, s/iteration, status ok|oom|...
#   results/profile/memory.csv                    all probes, one row each
#   results/figures/memory_vs_resolution.png      memory vs resolution, train and sample, OOM marked
# Each probe uses the model's run config (model_config) at (res, res, res) on random volumes: no data.
_PROF = config["profiling"]
_LIMIT = f"--memory-limit-gb {_PROF['memory_limit_gb']}" if _PROF["memory_limit_gb"] else ""
REPORT_FIGURES.append("results/figures/memory_vs_resolution.png")


rule profile_probe:
    """Peak memory and s/iteration of {model} ({mode}) at {res}^3, batch profiling.batch_size."""
    input:
        config=lambda w: model_config(w.model),
    output:
        "results/profile/{model}/{mode}_{res}.json",
    params:
        limit=_LIMIT,
        batch=_PROF["batch_size"],
        repeats=_PROF["repeats"],
        steps=_PROF["sample_steps"],
        timeout=115 * 60,  # within runtime: a probe past it is recorded as status timeout
    wildcard_constraints:
        mode="train|sample",
    log:
        "logs/profile/{model}/{mode}_{res}.log",
    benchmark:
        "benchmarks/profile/{model}/{mode}_{res}.tsv"
    threads: config["threads"]
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=int((_PROF["memory_limit_gb"] or 8) * 1024) + 1000,
        runtime=120,
    shell:
        "wdm-bench profile --config {input.config:q} --resolution {wildcards.res} "
        "--mode {wildcards.mode} --batch-size {params.batch} --repeats {params.repeats} "
        "--sample-steps {params.steps} --threads {threads} {params.limit} "
        "--timeout {params.timeout} --out {output:q} "
        "> {log:q} 2>&1"


rule memory_figure:
    """Every probe into results/profile/memory.csv and the memory-against-resolution figure."""
    input:
        lambda w: [
            f"results/profile/{m}/{mode}_{r}.json"
            for m in active_models()
            for mode in _PROF["modes"]
            for r in _PROF["resolutions"]
        ],
    output:
        csv="results/profile/memory.csv",
        png=report(
            "results/figures/memory_vs_resolution.png",
            caption="../report/memory.rst",
            category="Performance",
        ),
    params:
        limit=_LIMIT,
    log:
        "logs/figures/memory_vs_resolution.log",
    benchmark:
        "benchmarks/figures/memory_vs_resolution.tsv"
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "wdm-bench memory-figure --profiles {input:q} --csv {output.csv:q} --out {output.png:q} "
        "{params.limit} > {log:q} 2>&1"
