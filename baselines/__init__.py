"""Baseline models, one subpackage each, with the same train/sample interface as WDM."""
