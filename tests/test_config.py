from pathlib import Path

import pytest
import tomllib

from fedmmkt_strategy.config import STRATEGY_NAMES, ConfigError, RunConfig
from fedmmkt_strategy.strategies.factory import STRATEGIES

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_config_is_valid_and_complete():
    config = RunConfig.from_run_config(_pyproject_config())
    assert set(_pyproject_config()) == set(config.as_run_config())


def test_every_strategy_name_has_an_implementation():
    assert set(STRATEGY_NAMES) == set(STRATEGIES)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"dirichlet-alpha": -1.0}, "dirichlet-alpha = -1.0: Input should be greater than 0"),
        (
            {"strategy": "fedsgd"},
            "strategy = 'fedsgd': Input should be 'local', 'fedavg', 'fedmd', 'creamfl', 'self-ft' or 'fedmmkt'",
        ),
        ({"num-server-rounds": 0}, "num-server-rounds = 0"),
        (
            {"client-layout": "image:gru"},
            "client-layout = 'image:gru': layout entry 'image:gru': 'gru' is a text model",
        ),
        ({"image-size": 48}, "image-size = 48"),
        ({"typo-key": 1}, "typo-key: unknown key; known keys:"),
        # values that used to pass and fail later (issue #14)
        ({"num-server-rounds": True}, "num-server-rounds = True: Input should be a valid integer"),
        ({"synthetic-size": 96.0}, "synthetic-size = 96.0: Input should be a valid integer"),
        ({"lr": float("inf")}, "lr = inf: Input should be a finite number"),
        ({"dirichlet-alpha": float("inf")}, "dirichlet-alpha = inf: Input should be a finite number"),
        ({"labvote-beta": float("nan")}, "labvote-beta = nan: Input should be a finite number"),
        ({"seed": 2**63}, "seed = 9223372036854775808: Input should be less than or equal to 2147483647"),
        ({"contrastive-tau": 1e-300}, "contrastive-tau = 1e-300: Input should be greater than or equal to 0.001"),
        ({"fusion-dim": 130}, "fusion-dim = 130 must be a multiple of the 4 attention heads"),
        ({"pool-size": 10**12}, "pool-size = 1000000000000: Input should be less than or equal to 1000000"),
        ({"synthetic-size": 10**12}, "synthetic-size = 1000000000000"),
        ({"use-labvote": 1}, "use-labvote = 1: Input should be a valid boolean"),
        ({"run-name": 3}, "run-name = 3: Input should be a valid string"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(override, expected):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_run_config({**_pyproject_config(), **override})
    assert expected in str(err.value)
    assert "--run-config" in str(err.value)


def test_flower_integer_overrides_of_float_keys_are_accepted():
    assert RunConfig.from_run_config({"round-timeout": 40}).round_timeout == 40.0


def test_baselines_record_the_switches_they_run_with():
    from fedmmkt_strategy.strategies.factory import effective_config

    fedmd = effective_config(RunConfig.from_run_config({"strategy": "fedmd"}))
    assert not fedmd.use_labvote and not fedmd.use_t2i_update and fedmd.labvote_prompt_mix == 0.0
    assert fedmd.as_run_config()["use-labvote"] is False  # what metrics.json and the log show
    creamfl = effective_config(RunConfig.from_run_config({"strategy": "creamfl", "use-contrastive-aggregation": False}))
    assert creamfl.use_contrastive_aggregation and not creamfl.use_cross_attention
    plain = RunConfig.from_run_config({"strategy": "fedmmkt", "use-labvote": False})
    assert effective_config(plain) is plain  # fedmmkt fixes nothing: its switches are the ablations
