# Shared set-up and helpers: config defaults, the data sets, resolutions and models the DAG covers,
# where files go, and the shell commands the rules share (each written once, here).
import json
import re
import shutil
from shlex import quote as shlex_quote

from wdm.config import validate as _fill_defaults

# The same schema through the package fills nested defaults (e.g. a missing evaluation section).
config.update(_fill_defaults(config, source="workflow config"))
if config["threads"] is None:  # heavy jobs take every core given to Snakemake: one at a time
    try:
        _cores = workflow.cores
    except Exception:  # --report, --lint: no --cores, and Snakemake 9 raises on the access
        _cores = None
    config["threads"] = max(1, int(_cores or 1))

REPO = Path(workflow.basedir).parent

# `--use-conda` on a machine without conda/mamba: warn and run in the current environment
# instead of failing every job with "Error running conda info".
try:
    from snakemake_interface_executor_plugins.settings import DeploymentMethod

    _ds = workflow.deployment_settings
    if DeploymentMethod.CONDA in _ds.deployment_method and not (
        shutil.which("conda") or shutil.which("mamba")
    ):
        logger.warning(
            "wdm-bench: --use-conda given but neither conda nor mamba is on PATH; "
            "running every rule in the current environment (install the package with pip)."
        )
        _ds.deployment_method = frozenset(_ds.deployment_method) - {DeploymentMethod.CONDA}
except (ImportError, AttributeError):  # older Snakemake: leave the settings alone
    pass


# Only the configured data sets: a target naming another one has no rule (one clear line).
wildcard_constraints:
    dataset="|".join(re.escape(d) for d in config["datasets"]),
    res="[0-9]+",


MODELS = []  # filled by rules/models/<name>.smk through register_model()
STAGES = {}  # model -> its training stages, in order (the last one trains into .../{model}/run)
# Figures made by rules outside rules/figures.smk (e.g. "results/figures/memory_vs_resolution.png"):
# append their paths here so the `figures` and `all` targets (and the report) include them.
REPORT_FIGURES = []

# The shell commands, each written once. TRAIN: every model and stage through one launcher
# (torchrun for training.gpus > 1); an out-of-memory run exits 0 with "status": "oom" in its
# profile (under torchrun the failing rank exits 3 to stop the others, so a recorded OOM also
# counts as done); --resume: a rerun after a killed job continues from its last checkpoint.
# config flop_budget: every model trains for the same FLOPs (compute-matched; wdm/budget.py).
_BUDGET_FLAG = f"--flop-budget {config['flop_budget']:g}" if config.get("flop_budget") else ""
TRAIN_SHELL = (
    "{params.launcher} train --config {input.config:q} --data {params.data:q} "
    f"--out {{params.run:q}} {{params.stage}} --resume {_BUDGET_FLAG} --threads {{threads}} "
    "--no-progress > {log:q} 2>&1 "
    "|| grep -qs '\"status\": \"oom\"' {output.profile:q}"
)
SAMPLE_SHELL = (
    "wdm-bench sample --run {params.run:q} --n {params.n} --seed {params.seed} {params.sampler} "
    "--out {params.out:q} --threads {threads} --no-progress > {log:q} 2>&1"
)
# EVALUATE: the evaluation section travels as one validated settings file (rule evaluation_settings).
EVALUATE_SHELL = (
    "wdm-bench evaluate --config {input.settings:q} --real-stats {input.real_stats:q} "
    "--fake {params.fake:q} --out {output.metrics:q} --n-fake {params.n_fake} {params.extra} "
    "--threads {threads} > {log:q} 2>&1"
)
SETTINGS = "results/settings/evaluation.yaml"


def register_model(name, stages=None):
    """Add a model to the DAG; `stages`: its training stages in order (default: one, no flag)."""
    if name in MODELS:
        raise ValueError(f"model {name!r} registered twice")
    if name == "reference":
        raise ValueError("'reference' names the real-vs-real rows of table1; choose another name")
    MODELS.append(name)
    if stages:
        STAGES[name] = list(stages)


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


def check_model_configs():
    """Every active model's run config must exist (else the DAG would silently use stale runs)."""
    for model in active_models():
        path = Path(model_config(model))
        if not path.is_file():
            key = f"model_configs.{model}" if model in config["model_configs"] else f"model {model}"
            raise ValueError(f"{key}: run config {path} not found")


def train_settings(model, stage=None):
    """The `training` section of a model's (stage's) run config; {} if the file is missing."""
    from wdm.config import load_run_config

    path = Path(model_config(model))
    if not path.is_file():
        return {}
    cfg = load_run_config(path)
    if stage is not None:  # derived by the model (imports it, and torch): staged models only
        from wdm.model import configure_stage

        cfg = configure_stage(cfg, f"results/{model}/{stage}", stage)
    return cfg["training"]


def train_gpus(model):
    """GPUs a train job asks the executor for (`resources: gpu`): the run config's training.gpus,
    one per data-parallel process; 0 when it trains on the CPU (training.device: cpu)."""
    t = train_settings(model)
    return 0 if t.get("device") == "cpu" else int(t.get("gpus", 1))


def train_launcher(model, stage=None):
    """`wdm-bench`, or `torchrun ... -m wdm.cli` for training.gpus > 1 (torch DDP, wdm/distributed.py)."""
    n = int(train_settings(model, stage).get("gpus", 1))
    return "wdm-bench" if n <= 1 else f"torchrun --standalone --nproc_per_node {n} -m wdm.cli"


def dataset_cfg(dataset):
    return config["datasets"][dataset]


def run_dir(w):
    return f"results/{w.dataset}/{w.res}/{w.model}/run"


def all_cells():
    """(dataset, resolution) pairs of the configured data sets."""
    return [(d, r) for d, c in config["datasets"].items() for r in c["resolutions"]]


def untrained_rows():
    """Rows `<model>-init` of the models in config `untrained_rows` (their untrained
    initialisation, sampled by rule sample_initial) that are active."""
    return [f"{m}-init" for m in config.get("untrained_rows") or [] if m in active_models()]


def table_rows():
    """Every row of a (dataset, res) cell: the reference, the models, the untrained rows."""
    return ["reference", *active_models(), *untrained_rows()]


def models_regex(models=None):
    """Wildcard constraint matching the registered models (or the given ones)."""
    return "|".join(MODELS if models is None else models) or "__none__"


def earlier_stages(model):
    """The stages of `model` trained before its last one (each into .../{model}/{stage})."""
    return STAGES.get(model, [])[:-1]


def train_inputs(w):
    """The data, the run config, and the profiles of the stages trained before this one."""
    stages = STAGES.get(w.model, [])
    stage = getattr(w, "stage", None)
    before = stages[: stages.index(stage)] if stage else earlier_stages(w.model)
    return {
        "manifest": f"data/{w.dataset}/{w.res}/manifest.csv",
        "config": model_config(w.model),
        "earlier": [f"results/{w.dataset}/{w.res}/{w.model}/{s}/train_profile.json" for s in before],
    }


def stage_flag(model, stage=None):
    """`--stage S` for a staged model (default: its last stage), else nothing."""
    stage = stage or (STAGES[model][-1] if model in STAGES else None)
    return f"--stage {shlex_quote(stage)}" if stage else ""


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
    from wdm.config import load_run_config

    if config["figures"]["sweep"]["batch_size"]:
        return config["figures"]["sweep"]["batch_size"]
    run_bs = load_run_config(model_config(model))["sampling"]["batch_size"]
    return min(config["figures"]["sweep"]["n_samples"], run_bs)


def sanity_cells():
    """The (dataset, res) cells with enough test volumes for the metric sanity suite (rule sanity)."""
    from eval.sanity import MIN_TEST

    return [(d, r) for d, r in all_cells() if dataset_cfg(d)["n_test"] >= MIN_TEST]


def figure_targets():
    """Every figure of every (dataset, resolution), plus those other rule files registered."""
    out = []
    for d, r in all_cells():
        out.append(f"results/figures/samples_{d}_{r}.png")
        out += [f"results/figures/samples_{d}_{r}_{m}.png" for m in active_models()]
        out.append(f"results/figures/loss_{d}_{r}.png")
        out.append(f"results/figures/fid_vs_n_{d}_{r}.png")
        if (d, r) in sanity_cells():
            out.append(f"results/figures/sanity_{d}_{r}.png")  # rule sanity (+ its sanity.csv)
        out += [f"results/figures/nearest_{d}_{r}_{m}.png" for m in active_models()]
        if sweep_models():
            out.append(f"results/figures/fid_vs_steps_{d}_{r}.png")
    return out + list(REPORT_FIGURES)


def paper_reference():
    return config["paper_reference"] or str(REPO / "results" / "paper_reference.csv")
