# Shared helpers: which data sets, resolutions and models the DAG covers, and where files go.
from shlex import quote as shlex_quote

import yaml


MODELS = []  # filled by rules/models/<name>.smk through register_model()
GENERIC_MODELS = []  # models trained and sampled by the generic rules in models.smk
# Figures made by rules outside rules/figures.smk (e.g. "results/figures/memory_vs_resolution.png"):
# append their paths here so the `figures` and `all` targets (and the report) include them.
REPORT_FIGURES = []


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


def train_settings(model):
    """The `training` section of a model's run config (defaults filled; {} if the file is missing)."""
    from wdm.config import load_run_config

    path = Path(model_config(model))
    return load_run_config(path)["training"] if path.is_file() else {}


def train_gpus(model):
    """GPUs a train job asks the executor for (`resources: gpu`): the run config's training.gpus,
    one per data-parallel process; 0 when it trains on the CPU (training.device: cpu)."""
    t = train_settings(model)
    return 0 if t.get("device") == "cpu" else int(t.get("gpus", 1))


def train_launcher(model):
    """`wdm-bench`, or `torchrun ... -m wdm.cli` for training.gpus > 1 (torch DDP, wdm/distributed.py)."""
    n = int(train_settings(model).get("gpus", 1))
    return "wdm-bench" if n <= 1 else f"torchrun --standalone --nproc_per_node {n} -m wdm.cli"


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


# Figures, the FID-against-steps sweep and the paper comparison (rules/figures.smk).
def sweep_models():
    """Models of the FID-against-steps sweep: figures.sweep.models that are active."""
    unknown = sorted(set(config["figures"]["sweep"]["models"]) - set(MODELS))
    if unknown:
        raise ValueError(f"figures.sweep.models {unknown} have no file in rules/models; known: {sorted(MODELS)}")
    return [m for m in config["figures"]["sweep"]["models"] if m in active_models()]


def sweep_dir(dataset, res, model, point):
    return f"results/{dataset}/{res}/{model}/steps/{point['sampler']}_{point['steps']}"


def sweep_batch_size(model):
    """figures.sweep.batch_size, else min(n_samples, the run config's sampling.batch_size)."""
    if config["figures"]["sweep"]["batch_size"]:
        return config["figures"]["sweep"]["batch_size"]
    with open(model_config(model)) as f:
        run_bs = ((yaml.safe_load(f) or {}).get("sampling") or {}).get("batch_size", 10)
    return min(config["figures"]["sweep"]["n_samples"], run_bs)


def figure_targets():
    """Every figure of every (dataset, resolution), plus those other rule files registered."""
    out = []
    for d, r in all_cells():
        out.append(f"results/figures/samples_{d}_{r}.png")
        out += [f"results/figures/samples_{d}_{r}_{m}.png" for m in active_models()]
        out.append(f"results/figures/loss_{d}_{r}.png")
        if sweep_models():
            out.append(f"results/figures/fid_vs_steps_{d}_{r}.png")
    return out + list(REPORT_FIGURES)


def paper_reference():
    return config["paper_reference"] or str(REPO / "results" / "paper_reference.csv")
