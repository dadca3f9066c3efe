# Shared helpers: which data sets, resolutions and models the DAG covers, and where files go.
from shlex import quote as shlex_quote


MODELS = []  # filled by rules/models/<name>.smk through register_model()
GENERIC_MODELS = []  # models trained and sampled by the generic rules in models.smk


def register_model(name, generic=True):
    """Add a model to the DAG. Generic models use the shared train/sample rules."""
    if name in MODELS:
        raise ValueError(f"model {name!r} registered twice")
    if name == "reference":
        raise ValueError("'reference' names the real-vs-real rows of table1; choose another name")
    MODELS.append(name)
    if generic:
        GENERIC_MODELS.append(name)


def active_models():
    wanted = config.get("models")
    if wanted:
        unknown = sorted(set(wanted) - set(MODELS))
        if unknown:
            raise ValueError(f"config models {unknown} have no file in rules/models; known: {sorted(MODELS)}")
        return list(wanted)
    return list(MODELS)


def model_config(model):
    """Run config file of a model: config `model_configs`, else config/models/<model>.yaml."""
    path = config.get("model_configs", {}).get(model)
    return str(path) if path else str(REPO / "config" / "models" / f"{model}.yaml")


def dataset_cfg(dataset):
    return config["datasets"][dataset]


def run_dir(w):
    return f"results/{w.dataset}/{w.res}/{w.model}/run"


def all_cells():
    """(dataset, resolution) pairs of the configured data sets."""
    return [(d, r) for d, c in config["datasets"].items() for r in c["resolutions"]]


def generic_models_regex():
    """Wildcard constraint matching the models handled by the generic train/sample rules."""
    return "|".join(GENERIC_MODELS) or "__none__"
