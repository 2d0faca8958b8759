from pathlib import Path

import pytest
import tomllib

from fedmmkt_strategy.config import STRATEGY_NAMES, ConfigError, RunConfig
from fedmmkt_strategy.factory import STRATEGIES

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
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(override, expected):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_run_config({**_pyproject_config(), **override})
    assert expected in str(err.value)
    assert "--run-config" in str(err.value)


def test_flower_integer_overrides_of_float_keys_are_accepted():
    assert RunConfig.from_run_config({"round-timeout": 40}).round_timeout == 40.0
