"""Strategy selection by the run-config key `strategy`."""

from __future__ import annotations

from fedmmkt_strategy.base import FederatedStrategy
from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.creamfl import CreamFL
from fedmmkt_strategy.fedavg import PerArchitectureFedAvg
from fedmmkt_strategy.fedmd import FedMD
from fedmmkt_strategy.fedmmkt import FedMMKT
from fedmmkt_strategy.local import LocalTraining
from fedmmkt_strategy.results import RunRecorder
from fedmmkt_strategy.self_ft import SelfFineTuning
from fedmmkt_strategy.server_models import ServerModels

STRATEGIES: dict[str, type[FederatedStrategy]] = {
    "local": LocalTraining,
    "fedavg": PerArchitectureFedAvg,
    "fedmd": FedMD,
    "creamfl": CreamFL,
    "self-ft": SelfFineTuning,
    "fedmmkt": FedMMKT,
}


def build_strategy(config: RunConfig, recorder: RunRecorder, models: ServerModels | None = None) -> FederatedStrategy:
    """The strategy named by `config.strategy`; `models` lets several runs share loaded server models."""
    cls = STRATEGIES[config.strategy]
    if issubclass(cls, FedMMKT):
        return cls(config, recorder, models)
    return cls(config, recorder)
