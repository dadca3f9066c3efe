# WDM (Friedrich et al. 2024): trained and sampled by the generic rules in rules/models.smk.
register_model("wdm")
