"""Strategy selection by the run-config key `strategy`."""

from __future__ import annotations

from fedmmkt_strategy.base import FederatedStrategy
from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.fedavg import PerArchitectureFedAvg
from fedmmkt_strategy.local import LocalTraining
from fedmmkt_strategy.results import RunRecorder

STRATEGIES: dict[str, type[FederatedStrategy]] = {
    "local": LocalTraining,
    "fedavg": PerArchitectureFedAvg,
}


def build_strategy(config: RunConfig, recorder: RunRecorder) -> FederatedStrategy:
    """The strategy named by `config.strategy`."""
    return STRATEGIES[config.strategy](config, recorder)
