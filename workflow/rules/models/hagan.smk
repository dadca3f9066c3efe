# HA-GAN (baselines/hagan, Sun et al. 2022): trained and sampled by the generic rules in rules/models.smk.
register_model("hagan")
