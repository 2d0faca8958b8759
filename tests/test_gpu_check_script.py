"""scripts/gpu_check.py runs one paper-profile round end to end; here on CPU at tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_one_round_on_cpu_and_writes_its_figures(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--scale", "tiny"]
    done = subprocess.run([*cmd, "--workdir", str(tmp_path / "work")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["ok"] and report["failures"] == []
    assert {c["architecture"] for c in report["clients"]} == {"resnet18", "vit-s", "bert"}
    assert report["lora"]["lora_B_norm"] > 0 and report["server_metrics"]["t2i_finetune_samples"] > 0
    assert "clip_score" in report["server_metrics"] and "gen_acc" in report["server_metrics"]
    assert report["generation_benchmark"]["images_per_s"] > 0 and report["times"]["time_synthesis_s"] > 0
    assert report["client_device"] == "cpu" and all(t > 0 for t in report["client_phase_times"].values())
