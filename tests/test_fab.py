"""What `flwr build` / `flwr run` pack into the FAB: the apps' code and config, never what runs,
tests and tools write inside the app folder (results, deployment/, test-artifacts/, TensorBoard
and W&B files, environments, caches). Flower 1.42 drops the root .gitignore's matches
(`flwr.cli.utils.filter_paths_for_publish`), then keeps only its code and config file types."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from flwr.cli.build import build_fab_from_files
from flwr.cli.utils import collect_files
from flwr.common.constant import FAB_MAX_SIZE

ROOT = Path(__file__).resolve().parents[1]
DEEP = "/".join(f"d{i}" for i in range(12))  # deeper than Flower's 10 levels: must not fail the build
#: Files a run, a test or a tool may leave in the app folder, all of types a FAB would otherwise hold.
ARTIFACTS = (
    "results/fedmmkt-20250101/metrics.json",
    "results/fedmmkt-20250101/report.md",
    f"results/fedmmkt-20250101/{DEEP}/state.json",
    "deployment/deployment.json",
    "deployment/flwr-home/config.toml",
    "test-artifacts/run.json",
    "comparison/comparison.json",
    "comparison/table.md",
    "certs/ca.json",
    "byzantine-results/summary.json",
    "runs/smoke/tensorboard/projector_config.yaml",
    "runs/smoke/wandb/run-1/files/config.yaml",
    ".flwr-home/config.toml",
    ".flwr/config.toml",
    ".venv/lib/python3.11/site-packages/pkg/__init__.py",
    "client_app/.venv/lib/pkg/__init__.py",
    ".cache/huggingface/hub/model/config.json",
    ".pytest_cache/README.md",
    "fedmmkt_strategy/__pycache__/config.cpython-311.py",
    "dist/fedmmkt-0.1.0.json",
    "build/lib/fedmmkt_strategy/config.py",
)
ARTIFACT_DIRS = tuple(sorted({a.split("/")[0] + "/" for a in ARTIFACTS} - {"client_app/", "fedmmkt_strategy/"}))


def test_the_fab_holds_the_apps_and_nothing_a_run_wrote():
    files: dict[str, bytes | Path] = {
        name: path for name, path in collect_files(ROOT).items() if not name.startswith((".git/", ".venv/"))
    }
    files.update({name: b"{}" for name in ARTIFACTS})
    fab, _ = build_fab_from_files(files)
    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    leaked = sorted(n for n in names if n.startswith(ARTIFACT_DIRS) or "/.venv/" in n or "__pycache__" in n)
    assert not leaked, f"in the FAB: {leaked}"
    for needed in ("pyproject.toml", "server_app/app.py", "client_app/app.py", "examples/reference_client/app.py"):
        assert needed in names
    assert not any(Path(n).name.startswith("test_") for n in names)  # Flower leaves test modules out
    assert len(fab) < FAB_MAX_SIZE / 4
