rule prepare_data:
    """Build or preprocess a data set at one resolution into data/{dataset}/{res}/."""
    input:
        # The raw data folder of a real data set: a missing folder fails at DAG time.
        source=lambda w: dataset_cfg(w.dataset)["source"] or [],
    output:
        manifest="data/{dataset}/{res}/manifest.csv",
    params:
        kind=lambda w: dataset_cfg(w.dataset)["kind"],
        seed=lambda w: dataset_cfg(w.dataset)["seed"],
        n_test=lambda w: dataset_cfg(w.dataset)["n_test"],
        # Optional flags, each empty or a shell-quoted "--flag value".
        source=lambda w: (
            f"--source {shlex_quote(str(dataset_cfg(w.dataset)['source']))}"
            if dataset_cfg(w.dataset)["source"]
            else ""
        ),
        n_train=lambda w: (
            f"--n-train {int(dataset_cfg(w.dataset)['n_train'])}"
            if dataset_cfg(w.dataset)["n_train"] is not None
            else ""
        ),
        modality=lambda w: (
            f"--modality {shlex_quote(dataset_cfg(w.dataset)['modality'])}"
            if dataset_cfg(w.dataset)["kind"] == "brats"
            else ""
        ),
        strict=lambda w: "--strict" if dataset_cfg(w.dataset)["strict"] else "",
        # Upstream switches, each passed only where it applies (a param: a change re-prepares).
        orientation=lambda w: (
            f"--orientation {shlex_quote(dataset_cfg(w.dataset)['orientation'])}"
            if dataset_cfg(w.dataset)["kind"] == "lidc"
            else ""
        ),
        small_scans=lambda w: (
            f"--small-scans {shlex_quote(dataset_cfg(w.dataset)['small_scans'])}"
            if dataset_cfg(w.dataset)["kind"] == "lidc"
            else ""
        ),
        # brats/lidc; phantom-brain only when not holdout, so that prepare refuses it in one line.
        split=lambda w: (
            f"--split {shlex_quote(dataset_cfg(w.dataset)['split'])}"
            if dataset_cfg(w.dataset)["kind"] in ("brats", "lidc")
            or dataset_cfg(w.dataset)["split"] != "holdout"
            else ""
        ),
        cube=lambda w: (
            f"--cube {int(dataset_cfg(w.dataset)['cube'])}"
            if dataset_cfg(w.dataset)["cube"] is not None
            else ""
        ),
        spacing=lambda w: (
            f"--spacing-mm {float(dataset_cfg(w.dataset)['spacing_mm'])}"
            if dataset_cfg(w.dataset)["spacing_mm"] is not None
            else ""
        ),
        out=lambda w: f"data/{w.dataset}/{w.res}",
    log:
        "logs/{dataset}/{res}/prepare.log",
    benchmark:
        "benchmarks/{dataset}/{res}/prepare.tsv"
    threads: config["threads"]
    conda:
        "../envs/wdm.yaml"
    resources:
        # Real data: each case in flight holds a few volumes (see bench/bench_prepare.py).
        mem_mb=lambda w, threads: (
            4000 if dataset_cfg(w.dataset)["kind"] == "phantom-brain" else 2000 + 2500 * threads
        ),
        runtime=lambda w: 60 if dataset_cfg(w.dataset)["kind"] == "phantom-brain" else 12 * 60,
    shell:
        "wdm-bench prepare --dataset {params.kind:q} --out {params.out:q} {params.source} "
        "{params.n_train} {params.modality} {params.strict} {params.orientation} "
        "{params.small_scans} {params.split} {params.cube} {params.spacing} --size {wildcards.res} "
        "--seed {params.seed} --n-test {params.n_test} --threads {threads} --no-progress "
        "--overwrite > {log:q} 2>&1"
