rule prepare_data:
    """Build or preprocess a data set at one resolution into data/{dataset}/{res}/."""
    output:
        manifest="data/{dataset}/{res}/manifest.csv",
    params:
        kind=lambda w: dataset_cfg(w.dataset)["kind"],
        seed=lambda w: dataset_cfg(w.dataset)["seed"],
        n_train=lambda w: dataset_cfg(w.dataset)["n_train"],
        n_test=lambda w: dataset_cfg(w.dataset)["n_test"],
        source=lambda w: (
            f"--source {shlex_quote(dataset_cfg(w.dataset)['source'])}"
            if dataset_cfg(w.dataset)["source"]
            else ""
        ),
        out=lambda w: f"data/{w.dataset}/{w.res}",
    log:
        "logs/{dataset}/{res}/prepare.log",
    benchmark:
        "benchmarks/{dataset}/{res}/prepare.tsv"
    conda:
        "../envs/wdm.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "wdm-bench prepare --dataset {params.kind:q} --out {params.out:q} {params.source} "
        "--size {wildcards.res} --seed {params.seed} --n-train {params.n_train} "
        "--n-test {params.n_test} --overwrite > {log:q} 2>&1"
