"""The presets (presets/*.toml) parse as Flower parses ``--run-config FILE.toml`` and validate as run
configs; the one loader finds them and names the missing ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli
from flwr.common.config import parse_config_args

from fedmmkt_strategy.config import ConfigError, RunConfig, load_preset

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = tomli.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


@pytest.mark.parametrize("name", ["paper-flowers", "paper-food101"])
def test_preset_is_a_valid_run_config_override(name):
    overrides = parse_config_args([str(ROOT / "presets" / f"{name}.toml")])
    assert set(overrides) <= set(DEFAULTS), f"keys unknown to pyproject.toml: {set(overrides) - set(DEFAULTS)}"
    config = RunConfig.from_run_config({**DEFAULTS, **overrides})
    assert config.dataset == "hf" and config.t2i_lora == "on"
    assert {e.architecture for e in config.layout} == {"resnet18", "vit-s", "bert"}
    assert config.world_spec.image_size == config.image_size


def test_every_run_config_key_is_declared_in_pyproject():
    assert set(DEFAULTS) == {name.replace("_", "-") for name in RunConfig.model_fields}


@pytest.mark.parametrize("name", ["micro-server", "micro-federation"])
def test_micro_presets_are_run_config_overrides_flower_reads(name):
    """The size presets are flat run configs: `flwr run . --run-config presets/micro-server.toml` works."""
    overrides = parse_config_args([str(ROOT / "presets" / f"{name}.toml")])
    assert overrides == load_preset(name)
    assert set(overrides) <= set(DEFAULTS)
    RunConfig.from_run_config({**DEFAULTS, **overrides})


def test_every_named_variant_and_comparison_is_a_valid_run_config():
    variants = load_preset("variants")
    for name, overrides in variants.items():
        assert set(overrides) <= set(DEFAULTS), name
        RunConfig.from_run_config({**DEFAULTS, **overrides})
    for name, table in load_preset("comparisons").items():
        assert set(table) <= {"variants", "seeds", "run-config", "num-nodes"}, name
        assert set(table["run-config"]) <= set(DEFAULTS), name
        for variant in table["variants"]:
            assert variant in variants or variant in {"local", "fedavg", "fedmd", "creamfl", "self-ft", "fedmmkt"}


def test_an_unknown_preset_names_the_ones_there_are():
    with pytest.raises(ConfigError, match="no preset 'nope'.*micro-server"):
        load_preset("nope")


def test_benchmark_size_presets_hold_valid_run_config_keys():
    """The benchmarks' sizes are presets too; the parts that are run config must validate."""
    growth = load_preset("bench-growth")
    for sizes in (growth["full"], growth["quick"]):
        for overrides in (growth["common"], sizes.get("extra", {}), sizes["clients_sweep"], sizes["samples_sweep"]):
            assert set(overrides) <= set(DEFAULTS)
            RunConfig.from_run_config({**DEFAULTS, **growth["common"], **overrides})
    quick_synthesis = load_preset("bench-synthesis")["quick"]
    assert set(quick_synthesis) <= set(DEFAULTS)
    RunConfig.from_run_config({**DEFAULTS, **quick_synthesis})
    gpu = load_preset("gpu-check")
    assert set(gpu["scales"]) == {"tiny", "sd"}
    RunConfig.from_run_config({**DEFAULTS, "client-layout": gpu["layout"]})
    assert set(load_preset("bench-server-scale")["quick"]) <= set(load_preset("bench-server-scale")["full"])
