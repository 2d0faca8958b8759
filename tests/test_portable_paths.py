"""Committed result files carry no machine-specific paths."""

import tempfile
from pathlib import Path

from lab.portable_paths import portable


def test_project_home_and_temp_paths_become_portable():
    project = Path("/srv/checkout")
    run_tmp = Path(tempfile.gettempdir()) / "fedmmkt-e2e-78pgpepb"
    text = f'"{project}/.venv/bin/flwr run" "{Path.home()}/fedmmkt-results/x" "{run_tmp}/results" "{project}"'
    assert portable(text, project) == '".venv/bin/flwr run" "~/fedmmkt-results/x" "<tmp>/results" "."'
