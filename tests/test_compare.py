"""The comparison command's variant names: strategies, ablations and `+key=value` overrides."""

from __future__ import annotations

import pytest

from fedmmkt_strategy.cli.compare import PRESETS, variant_config
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


def _run(seed: int, image: float) -> dict:
    return {"seed": seed, "image_acc": image}


def test_merge_orders_each_variant_by_seed_so_deltas_pair():
    from fedmmkt_strategy.cli.compare import merge_results, paired_deltas

    lane_a = {"local": [_run(2, 0.3)], "fedmmkt": [_run(2, 0.5)]}
    lane_b = {"local": [_run(0, 0.1), _run(1, 0.2)], "fedmmkt": [_run(0, 0.4), _run(1, 0.2)]}
    merged = merge_results([lane_a, lane_b])
    assert [r["seed"] for r in merged["fedmmkt"]] == [0, 1, 2]
    assert paired_deltas(merged, "fedmmkt", "image_acc", "local") == pytest.approx([0.3, 0.0, 0.2])


def test_merge_rejects_a_seed_run_twice():
    from fedmmkt_strategy.cli.compare import merge_results

    with pytest.raises(ValueError, match="twice"):
        merge_results([{"local": [_run(0, 0.1)]}, {"local": [_run(0, 0.2)]}])


def test_merge_gives_a_lane_without_t2i_scores_the_pre_trained_ones_of_its_seed():
    from fedmmkt_strategy.cli.compare import merge_results

    nan = float("nan")
    measured = {"seed": 1, "gen_acc_round0": 0.6, "fid_round0": 12.0, "gen_acc": 0.65, "fid": 13.0, "rounds": {}}
    for key in ("gen_acc_confused_round0", "gen_acc_clean_round0", "gen_acc_confused", "gen_acc_clean"):
        measured[key] = 0.5
    unmeasured = {"seed": 1, "gen_acc_round0": nan, "fid_round0": nan, "gen_acc": nan, "fid": nan, "rounds": {}}
    for key in ("gen_acc_confused_round0", "gen_acc_clean_round0", "gen_acc_confused", "gen_acc_clean"):
        unmeasured[key] = nan
    merged = merge_results([{"fedmmkt": [measured]}, {"fedmd": [unmeasured]}])
    fedmd = merged["fedmd"][0]
    assert fedmd["gen_acc"] == fedmd["gen_acc_round0"] == 0.6  # never changes the T2I model
    assert fedmd["rounds"]["gen_acc"] == [[0, 0.6]]
    assert merged["fedmmkt"][0]["gen_acc"] == 0.65


def test_variant_overrides_take_bare_strings():
    from fedmmkt_strategy.cli.compare import variant_config

    assert variant_config("fedmmkt+client-calibration=temperature+labvote-beta=0.3") == {
        "strategy": "fedmmkt",
        "client-calibration": "temperature",
        "labvote-beta": 0.3,
    }
    assert variant_config('fedmmkt+t2i-pairs="voted"')["t2i-pairs"] == "voted"
