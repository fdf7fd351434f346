"""The run store: every run is a self-describing folder.

    RUN_DIR/
      config.json        the TrainConfig, as JSON
      status.json        state (queued/running/finished/stopped/failed/interrupted), step, progress, error
      metrics.jsonl      one JSON object per logged step, appended
      evaluations.jsonl  one JSON object per meta-test
      best.pt, last.pt   checkpoints (weights, optimiser, step, RNG), each carrying its config

Whole-file writes go to a temporary file first and are moved into place with ``os.replace``,
so a reader never sees half a file. Checkpoints are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from datetime import datetime
from pathlib import Path

import torch

from lab.adaptation import adapts_by_rate, check_rate_scales
from lab.algorithms import build
from lab.config import TrainConfig
from lab.metric import check_metric
from lab.views import check_views

STATES = ("queued", "running", "finished", "stopped", "failed", "interrupted")
ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_MODEL = ASSETS / "protonet-omniglot.pt"  # the model the lab opens with when the zoo has no drawing model
# The zoo models that, once shipped, are the default: the first of them that is.
DRAWING_MODELS = ("protonet-draw-ensemble", "protonet-draw")
ZOO_PREFIX = "zoo:"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
STOP_FILE = "STOP"


def default_runs_dir() -> Path:
    """``$LAB_RUNS_DIR``, else ``runs/`` in the current folder."""
    return Path(os.environ.get("LAB_RUNS_DIR") or "runs")


def check_name(name: str) -> str:
    """A run name is letters, digits, '.', '_' and '-' (not leading), at most 80 characters."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name:
        raise ValueError(
            f"run name {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit, at most 80 characters)"
        )
    return name


def run_path(runs_dir: str | os.PathLike, name: str) -> Path:
    """The folder of run ``name`` inside ``runs_dir``; a name that would leave it is refused."""
    base = Path(runs_dir).resolve()
    path = (base / check_name(name)).resolve()
    if path.parent != base:
        raise ValueError(f"run name {name!r} would leave the runs folder {base}")
    return path


def create_run(runs_dir: str | os.PathLike, config, name: str | None = None, stem: str | None = None) -> Path:
    """Make a new run folder holding ``config``: named ``name`` (refused when taken), else ``stem`` (default:
    algorithm, dataset and time) with a numeric suffix when taken."""
    stem = name or stem or f"{config.algorithm}-{config.dataset}-{datetime.now():%Y%m%d-%H%M%S}"
    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    path = run_path(runs_dir, stem)
    if name and path.exists():
        raise ValueError(f"a run named {name!r} already exists in {Path(runs_dir).resolve()}")
    n = 2
    while path.exists():
        path = run_path(runs_dir, f"{stem}-{n}")
        n += 1
    path.mkdir()
    write_json(path / "config.json", config.to_dict())
    write_status(path, "queued", step=0)
    return path


# --------------------------------------------------------------------------- files


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line and flush it to disk, so a crash loses no earlier line."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """All complete JSON lines of ``path``; a half-written or corrupt line is dropped."""
    records = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
    except FileNotFoundError:
        pass
    return records


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric lines past ``step`` (written after the checkpoint a resume starts from)."""
    path = Path(run_dir) / "metrics.jsonl"
    kept = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- status


def write_status(run_dir: Path, state: str, **fields) -> dict:
    """Record the run's state, with this process as its owner while it runs."""
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")
    status = {**read_json(Path(run_dir) / "status.json", {}), **fields, "state": state, "updated": time.time()}
    if state == "running":
        status.update(pid=os.getpid(), host=socket.gethostname())
    write_json(Path(run_dir) / "status.json", status)
    return status


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def read_status(run_dir: Path) -> dict:
    """The run's status; a 'running' run whose process is gone reads as 'interrupted' (so does a
    'queued' one whose launched worker died before it started training)."""
    status = read_json(Path(run_dir) / "status.json", {"state": "failed", "error": "status.json is missing or unreadable"})
    owned = status.get("state") == "running" or (status.get("state") == "queued" and status.get("pid"))
    if owned and status.get("host") == socket.gethostname():
        if not _alive(int(status.get("pid", -1))):
            status["state"] = "interrupted"
    return status


def request_stop(run_dir: Path) -> None:
    """Ask a running training to stop gracefully (it writes a checkpoint first)."""
    (Path(run_dir) / STOP_FILE).touch()


def stop_requested(run_dir: Path) -> bool:
    return (Path(run_dir) / STOP_FILE).exists()


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, model, optimizer, config, **state) -> None:
    """Weights, optimiser state and training state, with the config inside, written atomically."""
    payload = {
        "config": config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        **state,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """A checkpoint's contents, loaded with ``weights_only=True``; a damaged file raises ``ValueError``."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"no checkpoint at {path}") from None
    except Exception as err:
        raise ValueError(f"the checkpoint {path} cannot be read ({type(err).__name__}: {err})") from None


def zoo_dir() -> Path:
    """``$LAB_ZOO_DIR``, else the zoo the lab ships in ``assets/zoo``."""
    return Path(os.environ.get("LAB_ZOO_DIR") or ASSETS / "zoo")


def drawing_model() -> str | None:
    """The name of the zoo's drawing model that ``default`` names: the first of :data:`DRAWING_MODELS` shipped."""
    return next((name for name in DRAWING_MODELS if (zoo_dir() / f"{name}.pt").is_file()), None)


def default_model() -> Path:
    """The file ``default`` names: the zoo's drawing model (:func:`drawing_model`) when one is shipped,
    else the model shipped in ``assets/`` (:data:`DEFAULT_MODEL`)."""
    drawing = drawing_model()
    if drawing:
        return zoo_dir() / f"{drawing}.pt"
    if not DEFAULT_MODEL.is_file():
        raise ValueError(f"the shipped model {DEFAULT_MODEL} is missing: rebuild it as assets/README.md says")
    return DEFAULT_MODEL


def resolve_source(source: str | os.PathLike) -> Path:
    """Where a model named on the command line or a page lives.

    ``zoo:NAME`` is a model of the zoo (``assets/zoo/NAME.pt``), ``default`` the model the lab opens
    with (:func:`default_model`), anything else a run folder or a checkpoint file.
    """
    text = str(source)
    if text == "default":
        return default_model()
    if text.startswith(ZOO_PREFIX):
        name = check_name(text[len(ZOO_PREFIX):])
        path = zoo_dir() / f"{name}.pt"
        if not path.is_file():
            shipped = sorted(p.stem for p in zoo_dir().glob("*.pt"))
            raise ValueError(f"the zoo has no model {name!r}; it ships {', '.join(shipped) or 'none yet'}")
        return path
    return Path(source)


def checkpoint_path(source: str | os.PathLike, which: str = "best") -> Path:
    """The checkpoint file ``source`` names: a run folder's ``which``.pt (``last.pt`` when there is none yet),
    or a file, or a name :func:`resolve_source` knows."""
    path = resolve_source(source)
    if path.is_dir():
        path = path / f"{which}.pt"
        if not path.exists():
            path = path.with_name("last.pt")
    return path


def load_model(source: str | os.PathLike, which: str = "best", device="cpu"):
    """(config, model) from a run folder's ``best.pt``/``last.pt``, a checkpoint file, or a name that
    :func:`resolve_source` knows (``default``, ``zoo:NAME``)."""
    path = checkpoint_path(source, which)
    checkpoint = load_checkpoint(path, map_location=device)
    try:
        config = TrainConfig.from_dict(checkpoint["config"])
        model = build(config)
        model.load_state_dict(checkpoint["model"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"the checkpoint {path} does not hold a model the lab can build ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]})") from None
    if "rate_scales" in checkpoint and adapts_by_rate(model):
        model.rate_scales = check_rate_scales(checkpoint["rate_scales"], f"the checkpoint {path}")
    if "metric" in checkpoint and hasattr(model, "whitening"):
        model.whitening = check_metric(checkpoint["metric"], model.embedding_dim, f"the checkpoint {path}")["whitening"]
    if "views" in checkpoint and hasattr(model, "views"):
        model.views = check_views(checkpoint["views"], f"the checkpoint {path}")
    return config, model.to(device).eval()


def list_runs(runs_dir: str | os.PathLike) -> list[dict]:
    """A summary of every run folder in ``runs_dir``, newest first."""
    base = Path(runs_dir)
    if not base.is_dir():
        return []
    out = []
    for path in base.iterdir():
        config = read_json(path / "config.json") if path.is_dir() else None
        if not config:
            continue
        status = read_status(path)
        evals = read_jsonl(path / "evaluations.jsonl")
        out.append(
            {
                "path": str(path.resolve()),
                "name": path.name,
                "algorithm": config.get("algorithm"),
                "dataset": config.get("dataset"),
                "n_way": config.get("n_way"),
                "k_shot": config.get("k_shot"),
                "status": status.get("state"),
                "step": status.get("step", 0),
                "best_val_accuracy": status.get("best_val_accuracy"),
                "test_accuracy": evals[-1]["accuracy"] if evals else None,
                "test_ci95": evals[-1]["ci95"] if evals else None,
                "elapsed_s": status.get("elapsed_s"),
                "device": status.get("device"),
                "error": status.get("error"),
                "created": (path / "config.json").stat().st_mtime,
            }
        )
    return sorted(out, key=lambda r: r["created"], reverse=True)


def export_model(source: str | os.PathLike, out: str | os.PathLike, which: str = "best") -> dict:
    """Write a run's checkpoint without its optimiser and RNG state: the weights, the config, and where
    they came from. The file loads with :func:`load_model` like any checkpoint."""
    path = checkpoint_path(source, which)
    checkpoint = load_checkpoint(path)
    payload = {
        "config": checkpoint["config"],
        "model": {k: v.detach().clone().contiguous() for k, v in checkpoint["model"].items()},
        "step": checkpoint.get("step"),
        "best_val": checkpoint.get("best_val"),
        "exported_from": path.parent.name + "/" + path.name,
    }
    payload |= {k: checkpoint[k] for k in ("temperature", "doubt", "calibration", "rate_scales", "metric", "views")
                if k in checkpoint}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, out)
    described = {k: v for k, v in payload.items() if k != "model"}
    if "metric" in described:  # by its shrinkage: the matrix is the file's
        described["metric"] = {"shrinkage": described["metric"]["shrinkage"]}
    return described | {"out": str(out), "bytes": out.stat().st_size}
