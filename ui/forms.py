"""The meta-training form: one widget per ``TrainConfig`` field, and the algorithm's own
hyper-parameters generated from its ``Hparams`` dataclass, so a newly registered algorithm
shows up with its fields and no page change.

Every widget is bound to the URL (``bind="query-params"``, its key is the parameter's name), so the
address bar is always a link that opens the form filled in as it is; :func:`config_query` writes
the same parameters for a saved run's config.
"""

from __future__ import annotations

import json

import streamlit as st

from lab.algorithms import REGISTRY
from lab.config import LR_SCHEDULES, TrainConfig, field_comments, hparam_fields
from lab.data import DATASETS, SPLIT_SCHEMES, dataset_status
from lab.device import DEVICE_CHOICES

Q = "query-params"
DEFAULTS = TrainConfig()
HELP = field_comments(TrainConfig)


def _hp_key(algorithm: str, name: str) -> str:
    return f"{algorithm}.{name}"


def _scheme_key(dataset: str) -> str:
    return f"split_scheme.{dataset}"


def config_query(config: dict) -> dict[str, str]:
    """URL parameters that open the Meta-Train form filled in with ``config`` (a ``TrainConfig`` dict)."""
    out = {}
    for name, value in config.items():
        if value is None or name in ("hparams", "split_scheme"):
            continue
        out[name] = str(value).lower() if isinstance(value, bool) else str(value)
    if config.get("split_scheme"):
        out[_scheme_key(config["dataset"])] = config["split_scheme"]
    for name, value in (config.get("hparams") or {}).items():
        if value is not None:
            key = _hp_key(config["algorithm"], name)
            out[key] = str(value).lower() if isinstance(value, bool) else value if isinstance(value, str) else json.dumps(value)
    return out


def _number(col, label, name, min_value, *, optional=False, **kw):
    default = getattr(DEFAULTS, name)
    return col.number_input(label, min_value=min_value, value=default if default is not None else None, key=name,
                            bind=Q, help=HELP.get(name), placeholder="none" if optional else None, **kw)


def _hparam_widget(algorithm: str, field):
    key, label = _hp_key(algorithm, field.name), field.name.replace("_", " ").capitalize()
    kw = dict(key=key, bind=Q, help=field.help or None)
    if field.choices:
        return st.selectbox(label, list(field.choices), index=list(field.choices).index(field.default)
                            if field.default in field.choices else 0, **kw)
    if field.kind == "bool":
        return st.toggle(label, value=bool(field.default), **kw)
    if field.kind == "int":
        return st.number_input(label, value=field.default, step=1, placeholder="none", **kw)
    if field.kind == "float":
        return st.number_input(label, value=field.default, format="%g", placeholder="none", **kw)
    if field.kind == "str":
        return st.text_input(label, value=field.default, **kw) or (None if field.optional else "")
    text = st.text_input(f"{label} (JSON)", value=json.dumps(field.default), **kw)
    try:
        return json.loads(text)
    except ValueError:
        return text  # the config refuses it with the field's name


def hparams_inputs(algorithm: str) -> dict:
    """The algorithm's hyper-parameter widgets, two per row; returns ``{name: value}``."""
    fields = hparam_fields(algorithm)
    if not fields:
        st.caption(f"{algorithm} has no hyper-parameters of its own.")
        return {}
    values = {}
    columns = st.columns(2)
    for i, field in enumerate(fields):
        with columns[i % 2]:
            values[field.name] = _hparam_widget(algorithm, field)
    return values


@st.cache_data(ttl=30, show_spinner=False)
def _datasets() -> dict:
    return dataset_status()


def train_form() -> dict:
    """Render the form; returns the ``TrainConfig`` keyword arguments it describes (not yet validated)."""
    st.markdown("**Data**")
    c1, c2 = st.columns(2)
    dataset = c1.selectbox("Dataset", DATASETS, index=DATASETS.index(DEFAULTS.dataset), key="dataset", bind=Q,
                           help=HELP.get("dataset"))
    schemes = SPLIT_SCHEMES[dataset]
    scheme = c2.selectbox("Class split", schemes, key=_scheme_key(dataset), bind=Q,
                          help="Which classes meta-train, meta-validate and meta-test (they never overlap).")
    found = _datasets().get(dataset)
    data_dir = None
    if dataset == "folder":
        data_dir = st.text_input("Image folder", key="data_dir", bind=Q, placeholder="/path/to/images",
                                 help="One sub-folder of images per class.") or None
    elif found and not found["available"]:
        st.warning(f"{dataset} is not at {found['where']}: set LAB_DATA_DIR to the data folder.", icon=":material/folder_off:")

    st.markdown("**Algorithm**")
    algorithm = st.selectbox("Algorithm", sorted(REGISTRY), index=sorted(REGISTRY).index(DEFAULTS.algorithm),
                             key="algorithm", bind=Q, label_visibility="collapsed")
    st.caption(REGISTRY[algorithm].summary)
    hparams = hparams_inputs(algorithm)

    st.markdown("**Tasks**")
    c1, c2 = st.columns(2)
    n_way = _number(c1, "N-way", "n_way", 2, step=1)
    k_shot = _number(c2, "K-shot", "k_shot", 1, step=1)
    n_query = _number(c1, "Queries per class", "n_query", 1, step=1)
    train_way = _number(c2, "Training way", "train_way", 2, step=1, optional=True)

    st.markdown("**Optimisation**")
    c1, c2 = st.columns(2)
    meta_batch = _number(c1, "Meta-batch", "meta_batch", 1, step=1)
    meta_lr = _number(c2, "Meta learning rate", "meta_lr", 0.0, step=1e-4, format="%g")
    lr_schedule = c1.selectbox("LR schedule", LR_SCHEDULES, index=LR_SCHEDULES.index(DEFAULTS.lr_schedule),
                               key="lr_schedule", bind=Q, help=HELP.get("lr_schedule"))
    steps = _number(c2, "Steps", "steps", 1, step=100)
    minutes = _number(c1, "Minutes", "minutes", 0.0, step=1.0, format="%g", optional=True)
    seed = _number(c2, "Seed", "seed", 0, step=1)
    device = c1.selectbox("Device", DEVICE_CHOICES, index=DEVICE_CHOICES.index(DEFAULTS.device), key="device",
                          bind=Q, help=HELP.get("device"))
    with st.expander("Validation and logging"):
        c1, c2 = st.columns(2)
        val_every = _number(c1, "Validate every", "val_every", 1, step=10)
        val_episodes = _number(c2, "Validation episodes", "val_episodes", 1, step=50)
        log_every = _number(c1, "Log every", "log_every", 1, step=1)
    return dict(algorithm=algorithm, dataset=dataset, data_dir=data_dir,
                split_scheme=None if scheme == schemes[0] else scheme, n_way=n_way, k_shot=k_shot, n_query=n_query,
                train_way=train_way, meta_batch=meta_batch, meta_lr=meta_lr, lr_schedule=lr_schedule, steps=steps,
                minutes=minutes or None, seed=seed, device=device, val_every=val_every,
                val_episodes=val_episodes, log_every=log_every, hparams=hparams)
