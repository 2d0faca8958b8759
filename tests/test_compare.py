"""The comparison command's variant names: strategies, ablations and `+key=value` overrides."""

from __future__ import annotations

import pytest

from fedmmkt_strategy.compare import PRESETS, variant_config
from fedmmkt_strategy.config import ConfigError, RunConfig


def test_strategy_and_ablation_names():
    assert variant_config("fedmd") == {"strategy": "fedmd"}
    assert variant_config("fedmmkt-no-labvote") == {"strategy": "fedmmkt", "use-labvote": False}


def test_overrides_are_parsed_with_flower_value_types():
    config = variant_config("fedmmkt-no-t2i-update+labvote-beta=0.3+labvote-robust='reliability'")
    assert config == {
        "strategy": "fedmmkt",
        "use-t2i-update": False,
        "labvote-beta": 0.3,
        "labvote-robust": "reliability",
    }


def test_every_preset_variant_is_a_valid_run_config():
    for preset in PRESETS.values():
        for variant in preset.variants:
            RunConfig.from_run_config({**preset.overrides, **variant_config(variant)})


def test_a_bad_override_names_the_key():
    with pytest.raises(ConfigError, match="labvote-beta"):
        RunConfig.from_run_config(variant_config("fedmmkt+labvote-beta=3.0"))
