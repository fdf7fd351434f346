import ast
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]


def test_the_engine_never_imports_streamlit():
    for path in (ROOT / "lab").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "streamlit" for n in names), f"{path} imports streamlit"


def test_the_home_page_shows_the_device_and_the_datasets():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "Meta-Learning Lab"
    assert at.metric[0].label == "Computing on" and at.metric[0].value in ("CPU", "GPU (CUDA)", "GPU (Apple MPS)")
    table = at.dataframe[0].value
    assert set(table["dataset"]) == {"digits", "omniglot", "mnist"}


def test_the_server_is_bound_to_loopback_with_a_small_upload_cap():
    config = (ROOT / ".streamlit" / "config.toml").read_text()
    assert 'address = "127.0.0.1"' in config and "maxUploadSize = 5" in config
