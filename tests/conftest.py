"""Shared fixtures: the real data in ``$LAB_DATA_DIR`` (``../shared/data``), and scratch folders.

Tests that need a dataset skip when it is absent, except under CI (``CI=true``), where a
missing dataset is a failure.
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def _data_root() -> Path:
    return Path(os.environ.get("LAB_DATA_DIR") or DEFAULT_DATA)


@pytest.fixture(scope="session", autouse=True)
def _cache_and_data(tmp_path_factory):
    """Point the cache at a session folder (shared across tests) and the data at the real data."""
    os.environ.setdefault("LAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    os.environ.setdefault("LAB_DATA_DIR", str(_data_root()))
    os.environ.setdefault("LAB_RUNS_DIR", str(tmp_path_factory.mktemp("runs")))
    os.environ.setdefault("LAB_ZOO_DIR", str(tmp_path_factory.mktemp("zoo")))  # tests choose what the zoo holds
    yield


def require(path_parts: str) -> Path:
    path = _data_root() / path_parts
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI needs the real data (set LAB_DATA_DIR)")
        pytest.skip(f"{path} is missing (set LAB_DATA_DIR to the shared data folder)")
    return _data_root()


@pytest.fixture(scope="session")
def omniglot():
    from lab.data import load_dataset

    return load_dataset("omniglot", require("omniglot-py"))


@pytest.fixture(scope="session")
def mnist():
    from lab.data import load_dataset

    return load_dataset("mnist", require("MNIST/raw"))


@pytest.fixture(scope="session")
def digits():
    from lab.data import load_dataset

    return load_dataset("digits")


def train_tiny(folder: Path, name: str = "tiny", **fields) -> Path:
    """A run of a few steps on the bundled digits, trained to its end: a ProtoNet unless ``fields`` say
    otherwise (they replace the config's fields)."""
    from lab import runs
    from lab.config import TrainConfig
    from lab.training import train

    config = TrainConfig(**{"dataset": "digits", "n_query": 5, "steps": 3, "val_every": 3, "val_episodes": 5, **fields})
    run_dir = runs.create_run(folder, config, name)
    for _ in train(config, run_dir):
        pass
    return run_dir
