# Voxel-space 3D DDPM (baselines/ddpm3d): trained and sampled by the generic rules in rules/models.smk.
register_model("ddpm3d")
