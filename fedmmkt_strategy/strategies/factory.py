"""Strategy selection by the run-config key `strategy`."""

from __future__ import annotations

from logging import INFO

from flwr.common.logger import log

from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.generative.server_models import ServerModels
from fedmmkt_strategy.reporting.results import RunRecorder
from fedmmkt_strategy.strategies.base import FederatedStrategy
from fedmmkt_strategy.strategies.creamfl import CreamFL
from fedmmkt_strategy.strategies.fedavg import PerArchitectureFedAvg
from fedmmkt_strategy.strategies.fedmd import FedMD
from fedmmkt_strategy.strategies.fedmmkt import FedMMKT
from fedmmkt_strategy.strategies.local import LocalTraining
from fedmmkt_strategy.strategies.self_ft import SelfFineTuning

STRATEGIES: dict[str, type[FederatedStrategy]] = {
    "local": LocalTraining,
    "fedavg": PerArchitectureFedAvg,
    "fedmd": FedMD,
    "creamfl": CreamFL,
    "self-ft": SelfFineTuning,
    "fedmmkt": FedMMKT,
}


def effective_config(config: RunConfig) -> RunConfig:
    """The config as the strategy runs it: its `fixed_config` keys applied (a `fedmd` run records
    ``use-labvote = false``, not the default it ignores), with a log line for each value replaced."""
    fixed = STRATEGIES[config.strategy].fixed_config
    given = config.as_run_config()
    changed = {key: value for key, value in fixed.items() if given[key] != value}
    if not changed:
        return config
    for key, value in changed.items():
        log(INFO, "%s runs with %s = %r (the run config's %r does not apply)", config.strategy, key, value, given[key])
    return config.model_copy(update={key.replace("-", "_"): value for key, value in changed.items()})


def build_strategy(config: RunConfig, recorder: RunRecorder, models: ServerModels | None = None) -> FederatedStrategy:
    """The strategy named by `config.strategy`, on its `effective_config`; `models` lets several
    runs share loaded server models."""
    cls = STRATEGIES[config.strategy]
    config = effective_config(config)
    if issubclass(cls, FedMMKT):
        return cls(config, recorder, models)
    return cls(config, recorder)
