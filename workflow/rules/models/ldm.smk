# 3D latent diffusion (Khader et al. 2023, baselines/ldm): two training stages, two rules, and its
# own sampling rule. Both stages come from one run config (config/models/ldm.yaml); each rule first
# derives its stage's config with `python -m baselines.ldm stage-config`, then calls the CLI.
register_model("ldm", generic=False)


rule train_ldm_vqgan:
    """Stage 1: the VQ-GAN on data/{dataset}/{res} into results/{dataset}/{res}/ldm/vqgan."""
    input:
        manifest="data/{dataset}/{res}/manifest.csv",
        config=lambda w: model_config("ldm"),
    output:
        profile="results/{dataset}/{res}/ldm/vqgan/train_profile.json",
    params:
        run=lambda w: f"results/{w.dataset}/{w.res}/ldm/vqgan",
        stage_config=lambda w: f"results/{w.dataset}/{w.res}/ldm/vqgan_config.yaml",
        data=lambda w: f"data/{w.dataset}/{w.res}",
    log:
        "logs/{dataset}/{res}/ldm/train_vqgan.log",
    benchmark:
        "benchmarks/{dataset}/{res}/ldm/train_vqgan.tsv"
    threads: config["threads"]
    conda:
        "../../envs/wdm.yaml"
    resources:
        mem_mb=8000,
        runtime=24 * 60,
    shell:
        "python -m baselines.ldm stage-config --config {input.config:q} --stage vqgan "
        "--out {params.stage_config:q} > {log:q} 2>&1 && "
        "wdm-bench train --config {params.stage_config:q} --data {params.data:q} "
        "--out {params.run:q} --resume --threads {threads} --no-progress >> {log:q} 2>&1"


rule train_ldm:
    """Stage 2: the latent diffusion U-Net on the frozen stage-1 VQ-GAN's latents."""
    input:
        manifest="data/{dataset}/{res}/manifest.csv",
        config=lambda w: model_config("ldm"),
        vqgan="results/{dataset}/{res}/ldm/vqgan/train_profile.json",
    output:
        profile="results/{dataset}/{res}/ldm/run/train_profile.json",
    params:
        run=lambda w: f"results/{w.dataset}/{w.res}/ldm/run",
        vqgan_run=lambda w: f"results/{w.dataset}/{w.res}/ldm/vqgan",
        stage_config=lambda w: f"results/{w.dataset}/{w.res}/ldm/diffusion_config.yaml",
        data=lambda w: f"data/{w.dataset}/{w.res}",
    log:
        "logs/{dataset}/{res}/ldm/train.log",
    benchmark:
        "benchmarks/{dataset}/{res}/ldm/train.tsv"
    threads: config["threads"]
    conda:
        "../../envs/wdm.yaml"
    resources:
        mem_mb=8000,
        runtime=24 * 60,
    shell:
        "python -m baselines.ldm stage-config --config {input.config:q} --stage diffusion "
        "--vqgan-run {params.vqgan_run:q} --out {params.stage_config:q} > {log:q} 2>&1 && "
        "wdm-bench train --config {params.stage_config:q} --data {params.data:q} "
        "--out {params.run:q} --resume --threads {threads} --no-progress >> {log:q} 2>&1"


rule sample_ldm:
    """Sample evaluation.n_samples volumes from the trained latent diffusion model."""
    input:
        profile="results/{dataset}/{res}/ldm/run/train_profile.json",
    output:
        profile="results/{dataset}/{res}/ldm/samples/sample_profile.json",
    params:
        run=lambda w: f"results/{w.dataset}/{w.res}/ldm/run",
        out=lambda w: f"results/{w.dataset}/{w.res}/ldm/samples",
        n=config["evaluation"]["n_samples"],
        seed=config["evaluation"]["seed"],
    log:
        "logs/{dataset}/{res}/ldm/sample.log",
    benchmark:
        "benchmarks/{dataset}/{res}/ldm/sample.tsv"
    threads: config["threads"]
    conda:
        "../../envs/wdm.yaml"
    resources:
        mem_mb=8000,
        runtime=12 * 60,
    shell:
        "wdm-bench sample --run {params.run:q} --n {params.n} --seed {params.seed} "
        "--out {params.out:q} --threads {threads} --no-progress > {log:q} 2>&1"
