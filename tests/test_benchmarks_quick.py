"""The benchmark scripts run at ``--quick`` sizes and write the keys their README figures come from.

No timing assertions (issue 7: timings belong in benchmarks/README.md, not in tests). Byte counts
are deterministic, so the communication target is checked. The scripts run in this process, with
their results redirected to a temporary folder; the server-model scripts use the session's micro
cache (built once for the whole suite by whichever test needs it first).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import MICRO_SERVER

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


@pytest.fixture()
def bench(tmp_path: Path, monkeypatch):
    """Import a benchmark script by name, with its results written under tmp_path."""
    common = importlib.import_module("bench_common")
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    return importlib.import_module


def micro_overrides(cache: str) -> str:
    """Run-config overrides that select the micro pre-trained server models (presets/micro-server.toml)."""
    keys = {k: v for k, v in MICRO_SERVER.items() if k.startswith("pretrain-")}
    return " ".join(f"{k}={v}" for k, v in keys.items()) + f' cache-dir="{cache}"'


def test_communication_quick(bench, tmp_path: Path):
    result = bench("communication").main(["--quick", "--models", "bow,resnet18"])
    saved = json.loads((tmp_path / "communication-quick.json").read_text())
    assert saved["quick"] and {r["model"] for r in saved["rows"]} == {"bow", "resnet18"}
    row = next(r for r in result["rows"] if r["model"] == "resnet18")
    s = result["settings"][0]
    assert row["fedmmkt"]["uplink_formula_bytes"] == s["synthetic_size"] * (s["num_classes"] + 1 + s["fusion_dim"]) * 4
    assert row["fedmmkt"]["uplink_query_reply"]["serialised"] >= row["fedmmkt"]["uplink_formula_bytes"]
    assert row["fedmmkt"]["downlink_later_round"]["payload"] < row["fedmmkt"]["downlink_round1"]["payload"]
    assert result["resnet18_target"]["toy-default"]["met"]


def test_server_scale_quick(bench, tmp_path: Path):
    result = bench("server_scale").main(["--quick"])
    assert {"LabVote", "contrastive aggregation"} <= set(result["steps"])
    assert result["peak_rss_gb"] > result["uploads_gb"] and "target_met" in result
    assert (tmp_path / "server_scale-quick.json").exists()


def test_synthesis_efficiency_quick(bench, micro_cache: str, tmp_path: Path):
    result = bench("synthesis_efficiency").main(["--quick", "--run-config", micro_overrides(micro_cache)])
    assert result["raw_unet_images_per_s"] > 0 and result["generation_images_per_s"] > 0
    assert set(result["generation_split_s"]) == {"unet", "text_encoding", "scheduler", "vae_decode", "other", "total"}
    assert {"efficiency", "captioning_images_per_s", "target_met"} <= set(result)
    assert (tmp_path / "synthesis_efficiency-quick.json").exists()


def test_growth_quick_clients_sweep(bench, micro_cache: str, tmp_path: Path):
    result = bench("growth").main(["--quick", "--only", "clients", "--run-config", micro_overrides(micro_cache)])
    sweep = result["clients_sweep"]
    assert [r["clients"] for r in sweep["runs"]] == sweep["points"]
    assert {"time_round_s", "time_synthesis_s", "time_other_s"} <= set(sweep["exponents"])
    assert all(r["round"] == 2 for r in sweep["runs"])
    assert (tmp_path / "growth-quick.json").exists()


def test_e2e_script_parses_its_arguments(bench):
    with pytest.raises(SystemExit) as exit_info:
        bench("e2e").main(["--help"])
    assert exit_info.value.code == 0


def test_client_footprint_quick(bench, tmp_path: Path):
    result = bench("client_footprint").main(["--quick", "--repeats", "1"])
    [row] = result["rows"]
    assert row["modules_import"] == [] and row["round"]["modules"] == []  # the edge client loads no heavy library
    phases = {"import", "data + model + warm-up", "query.infer", "train.distill", "evaluate"}
    assert set(row["round"]["phases"]) == phases
    assert row["round"]["params"] > 0 and row["round"]["state_dict_bytes"] > 4 * row["round"]["params"]
    assert (tmp_path / "client_footprint-quick.json").exists()


def test_pretrain_quick(bench, tmp_path: Path):
    result = bench("pretrain").main(["--quick"])
    saved = json.loads((tmp_path / "pretrain-quick.json").read_text())
    assert set(saved["phases"]) == {"judge", "vae", "t2i", "captioner"}
    for phase in result["phases"].values():
        split = phase["split_s_per_step"]
        assert split["forward"] > 0 and split["backward"] > 0 and split["optimiser"] > 0
        assert phase["raw_forward_backward_s_per_step"] > 0 and phase["efficiency"] > 0
    assert result["phases"]["t2i"]["split_s_per_step"]["ema"] > 0
