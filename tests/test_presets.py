"""The paper presets parse as Flower parses ``--run-config FILE.toml`` and validate as run configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli
from flwr.common.config import parse_config_args

from fedmmkt_strategy.config import RunConfig

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
