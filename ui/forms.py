"""The meta-training form: one widget per ``TrainConfig`` field, and the algorithm's own
hyper-parameters generated from its ``Hparams`` dataclass, so a newly registered algorithm
shows up with its fields and no page change.

What the form shows is what a run gets. Number fields have no bounds of their own (a bounded
Streamlit number input keeps its last accepted value while showing a rejected one), whole-number
fields are float inputs shown with ``%g`` (an integer input drops the fraction of "2.5" unseen),
and every value is checked against ``TrainConfig`` as it is entered: a refused one gets its reason
under the field and :func:`train_form` reports it, so the page can keep Launch disabled. Whether
the run has a time limit is a toggle, never a 0.

Every widget is bound to the URL (``bind="query-params"``, its key is the parameter's name), so the
address bar is always a link that opens the form filled in as it is; :func:`config_query` writes
the same parameters for a saved run's config.
"""

from __future__ import annotations

import functools
import json
import math

import streamlit as st

from lab.algorithms import REGISTRY
from lab.algorithms.execution import PRECISION, VECTORIZE
from lab.config import LR_SCHEDULES, TrainConfig, hparam_fields
from lab.data import DATASETS, SPLIT_SCHEMES, dataset_status
from lab.device import DEVICE_CHOICES
from lab.fields import declared, field_comments, problem

Q = "query-params"
DEFAULTS = TrainConfig()
HELP = field_comments(TrainConfig)
WHOLE = ("n_way", "k_shot", "n_query", "train_way", "meta_batch", "steps", "seed", "val_every", "val_episodes",
         "log_every")
TIME_LIMIT_MINUTES = 10.0  # the Minutes field's value when the time limit is switched on


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
    if config.get("minutes"):
        out["time_limit"] = "true"
    if config.get("split_scheme"):
        out[_scheme_key(config["dataset"])] = config["split_scheme"]
    for name, value in (config.get("hparams") or {}).items():
        if value is not None:
            key = _hp_key(config["algorithm"], name)
            out[key] = str(value).lower() if isinstance(value, bool) else value if isinstance(value, str) else json.dumps(value)
    return out


def form_algorithms() -> list[str]:
    """The registered algorithms the form can set up: one whose defaults do not validate on their own
    (cluster experts need the run they start from) is trained from its own page."""
    return list(_form_algorithms(tuple(sorted(REGISTRY))))


@functools.lru_cache(maxsize=8)
def _form_algorithms(names: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for name in names:
        try:
            hparam_fields(name)
        except ValueError:
            continue
        out.append(name)
    return tuple(out)


# --------------------------------------------------------------------------- checks


def _reason(err: Exception | str, name: str) -> str:
    """The refusal of ``name`` without the field name in front (it is shown under that field)."""
    text = str(err)
    text = text[len(name) + 2:] if text.startswith(f"{name}: ") else text
    return text[:1].upper() + text[1:]


def _declared_problem(cls, name: str, value) -> str | None:
    """What the declaration of field ``name`` of ``cls`` says against ``value`` (None: nothing)."""
    for d in declared(cls):
        if d.name == name:
            found = problem(d, value)
            return _reason(found.replace(" or null", ""), name) if found else None
    return None


def _whole(value):
    """A whole number typed in a float field as an int; anything else unchanged (and checked as it is)."""
    return int(value) if isinstance(value, float) and math.isfinite(value) and value.is_integer() else value


def number_error(name: str, value, algorithm: str, optional: bool = False) -> str | None:
    """Why the ``TrainConfig`` field ``name`` refuses ``value``, or None when it takes it."""
    if value is None:
        return None if optional else "Enter a number"
    if name in WHOLE and not float(value).is_integer():
        return f"Must be a whole number, not {value:g}"
    if name == "seed":
        return None if value >= 0 else f"Must be 0 or more, not {value:g}"
    return _declared_problem(TrainConfig, name, _whole(value))


def hparam_error(algorithm: str, field, value) -> str | None:
    """Why the algorithm's hyper-parameter ``field`` refuses ``value``, or None when it takes it."""
    if value is None and field.kind in ("int", "float") and not field.optional:
        return "Enter a number"
    if field.kind == "int" and isinstance(value, float) and not value.is_integer():
        return f"Must be a whole number, not {value:g}"
    found = _declared_problem(REGISTRY[algorithm].Hparams, field.name, value)
    if found:
        return found
    try:  # an algorithm's own rules beyond its declarations
        TrainConfig(algorithm=algorithm, hparams={field.name: value})
    except ValueError as err:
        return _reason(err, field.name)
    return None


def _show(errors: dict, key: str, label: str, message: str | None) -> None:
    """Record a refusal (as "label: reason") and show the reason right under its field."""
    if message:
        errors[key] = f"{label}: {message}"
        st.error(message, icon=":material/error:")


# --------------------------------------------------------------------------- widgets


def _number(col, errors, label, name, algorithm, *, optional=False, step=1.0, default=None, fmt="%g"):
    """A bound number field with its refusal under it; returns the value as the run gets it."""
    default = getattr(DEFAULTS, name) if default is None else default
    with col:
        value = st.number_input(label, value=float(default) if default is not None else None, key=name, bind=Q,
                                step=float(step), format=fmt, help=HELP.get(name),
                                placeholder="none" if optional else None)
        _show(errors, name, label, number_error(name, value, algorithm, optional))
    return _whole(value)


def _hparam_widget(algorithm: str, field):
    key, label = _hp_key(algorithm, field.name), field.name.replace("_", " ").capitalize()
    kw = dict(key=key, bind=Q, help=field.help or None)
    if field.choices:
        return st.selectbox(label, list(field.choices), index=list(field.choices).index(field.default)
                            if field.default in field.choices else 0, **kw), None
    if field.kind == "bool":
        return st.toggle(label, value=bool(field.default), **kw), None
    if field.kind in ("int", "float"):
        value = st.number_input(label, value=float(field.default) if field.default is not None else None,
                                step=1.0 if field.kind == "int" else 0.01, format="%g", placeholder="none", **kw)
        return (_whole(value) if field.kind == "int" else value), None
    if field.kind == "str":
        return st.text_input(label, value=field.default, **kw) or (None if field.optional else ""), None
    text = st.text_input(f"{label} (JSON)", value=json.dumps(field.default), **kw)
    try:
        return json.loads(text), None
    except ValueError:
        return text, f"Not valid JSON: {text!r}"


def hparams_inputs(algorithm: str, errors: dict | None = None) -> dict:
    """The algorithm's hyper-parameter widgets, two per row, each refusal under its field; returns
    ``{name: value}`` and records refusals in ``errors`` under the widget's key."""
    errors = {} if errors is None else errors
    fields = hparam_fields(algorithm)
    if not fields:
        st.caption(f"{algorithm} has no hyper-parameters of its own.")
        return {}
    values = {}
    columns = st.columns(2)
    for i, field in enumerate(fields):
        with columns[i % 2]:
            value, problem = _hparam_widget(algorithm, field)
            _show(errors, _hp_key(algorithm, field.name), field.name.replace("_", " ").capitalize(),
                  problem or hparam_error(algorithm, field, value))
            values[field.name] = value
    return values


@st.cache_data(ttl=30, show_spinner=False)
def _datasets() -> dict:
    return dataset_status()


def budget_text(steps, minutes) -> str:
    """How the run will end, in words."""
    if not isinstance(steps, int) or steps < 1:
        return "Set the number of steps."
    if minutes is None:
        return f"Ends after {steps:,} steps: no time limit."
    return f"Ends at {steps:,} steps or after {minutes:g} min, whichever comes first (validation included)."


def train_form() -> tuple[dict, dict[str, str]]:
    """Render the form. Returns the ``TrainConfig`` keyword arguments it shows, and the refusals
    ``{widget key: reason}`` of the fields that cannot train (each also shown under its field)."""
    errors: dict[str, str] = {}
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
                                 help="One sub-folder of images per class.").strip() or None
        _show(errors, "data_dir", "Image folder",
              None if data_dir else "Enter the image folder (one sub-folder per class)")
    elif found and not found["available"]:
        st.warning(f"{dataset} is not at {found['where']}: set LAB_DATA_DIR to the data folder.", icon=":material/folder_off:")

    st.markdown("**Algorithm**")
    choices = form_algorithms()
    algorithm = st.selectbox("Algorithm", choices, index=choices.index(DEFAULTS.algorithm), key="algorithm", bind=Q,
                             label_visibility="collapsed")
    st.caption(REGISTRY[algorithm].summary)
    hparams = hparams_inputs(algorithm, errors)

    st.markdown("**Tasks**")
    c1, c2 = st.columns(2)
    n_way = _number(c1, errors, "N-way", "n_way", algorithm)
    k_shot = _number(c2, errors, "K-shot", "k_shot", algorithm)
    n_query = _number(c1, errors, "Queries per class", "n_query", algorithm)
    train_way = _number(c2, errors, "Training way", "train_way", algorithm, optional=True)

    st.markdown("**Optimisation**")
    c1, c2 = st.columns(2)
    meta_batch = _number(c1, errors, "Meta-batch", "meta_batch", algorithm)
    meta_lr = _number(c2, errors, "Meta learning rate", "meta_lr", algorithm, step=1e-4)
    lr_schedule = c1.selectbox("LR schedule", LR_SCHEDULES, index=LR_SCHEDULES.index(DEFAULTS.lr_schedule),
                               key="lr_schedule", bind=Q, help=HELP.get("lr_schedule"))
    seed = _number(c2, errors, "Seed", "seed", algorithm)

    st.markdown("**Machine**")
    c1, c2 = st.columns(2)
    device = c1.selectbox("Device", DEVICE_CHOICES, index=DEVICE_CHOICES.index(DEFAULTS.device), key="device",
                          bind=Q, help=HELP.get("device"))
    vectorize = c2.selectbox("Task batching", VECTORIZE, index=VECTORIZE.index(DEFAULTS.vectorize), key="vectorize",
                             bind=Q, help=HELP.get("vectorize"))
    precision = c1.selectbox("Precision", PRECISION, index=PRECISION.index(DEFAULTS.precision), key="precision",
                             bind=Q, help=HELP.get("precision"))

    st.markdown("**Budget**")
    # A link with minutes in it opens with the time limit on.
    limited = st.toggle("Time limit", value="minutes" in st.query_params, key="time_limit", bind=Q,
                        help="Off: the run ends after its steps. On: also after its minutes, whichever comes first.")
    c1, c2 = st.columns(2)
    steps = _number(c1, errors, "Steps", "steps", algorithm, step=100)
    minutes = _number(c2, errors, "Minutes", "minutes", algorithm, default=TIME_LIMIT_MINUTES) if limited else None
    st.caption(budget_text(steps, minutes))

    with st.expander("Validation and logging"):
        c1, c2 = st.columns(2)
        val_every = _number(c1, errors, "Validate every", "val_every", algorithm, step=10)
        val_episodes = _number(c2, errors, "Validation episodes", "val_episodes", algorithm, step=50)
        log_every = _number(c1, errors, "Log every", "log_every", algorithm)
    for key in ("val_every", "val_episodes", "log_every"):  # seen even while the expander is closed
        if key in errors:
            st.error(errors[key], icon=":material/error:")
    values = dict(algorithm=algorithm, dataset=dataset, data_dir=data_dir,
                  split_scheme=None if scheme == schemes[0] else scheme, n_way=n_way, k_shot=k_shot, n_query=n_query,
                  train_way=train_way, meta_batch=meta_batch, meta_lr=meta_lr, lr_schedule=lr_schedule, steps=steps,
                  minutes=minutes, seed=seed, device=device, vectorize=vectorize, precision=precision, val_every=val_every,
                  val_episodes=val_episodes, log_every=log_every, hparams=hparams)
    if not errors:  # the fields together, for a rule that joins two of them
        try:
            TrainConfig(**values)
        except ValueError as err:
            errors["config"] = str(err)
    return values, errors
