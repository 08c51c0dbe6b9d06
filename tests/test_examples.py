"""Every example runs as-is in quick mode, so none of them rots; the docs site builds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.spark


def run(*command: str, cwd: Path) -> str:
    environment = {**os.environ, "PYSPARK_PYTHON": sys.executable, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("demo.py", "Training history plot:"),
        ("pipeline_cv.py", "held-out AUC of the best pipeline:"),
        ("sklearn_demo.py", "held-out R2 (Spark):"),
        ("parameter_server.py", "final validation accuracy:"),
        ("sparse_hashed.py", "held-out AUC"),
        ("serve_pipeline.py", "-> price"),
    ],
)
def test_example_runs_in_quick_mode(script, expected, tmp_path):
    output = run(sys.executable, str(ROOT / "examples" / script), "--quick", cwd=tmp_path)
    assert expected in output
    if script == "demo.py":
        plot = tmp_path / "demo-output" / "history.png"
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_docs_site_builds_without_warnings(tmp_path):
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]')")
    mkdocs = str(Path(sys.executable).parent / "mkdocs")
    run(mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site"), cwd=ROOT)
    assert (tmp_path / "site" / "api" / "index.html").exists()
