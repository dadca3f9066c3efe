rule evaluate:
    """FID (MedicalNet features) and MS-SSIM diversity of one model's samples."""
    input:
        samples="results/{dataset}/{res}/{model}/samples/sample_profile.json",
        manifest="data/{dataset}/{res}/manifest.csv",
    output:
        metrics="results/{dataset}/{res}/{model}/metrics.json",
    params:
        real=lambda w: f"data/{w.dataset}/{w.res}/train",
        fake=lambda w: f"results/{w.dataset}/{w.res}/{w.model}/samples",
        ev=config["evaluation"],
        weights=lambda w: config["evaluation"]["weights"] or "none",
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
        "wdm-bench evaluate --real {params.real:q} --fake {params.fake:q} --out {output.metrics:q} "
        "--weights {params.weights:q} --depth {params.ev[depth]} --protocol {params.ev[protocol]} "
        "--seed {params.ev[seed]} --n-fake {params.ev[n_samples]} "
        "--batch-size {params.ev[batch_size]} --kernel-size {params.ev[kernel_size]} "
        "--threads {threads} > {log:q} 2>&1"
