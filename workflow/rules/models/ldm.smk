# 3D latent diffusion (Khader et al. 2023, baselines/ldm): two training stages from one run config
# (config/models/ldm.yaml). Stage 1 (VQ-GAN) trains into results/{dataset}/{res}/ldm/vqgan, stage 2
# (latent diffusion) into .../ldm/run, freezing the stage-1 run beside it; both through the
# generic train rules in rules/models.smk, sampled by the generic sample rule.
register_model("ldm", stages=["vqgan", "diffusion"])
