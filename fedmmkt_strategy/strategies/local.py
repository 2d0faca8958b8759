"""`local`: every client trains on its private data only; the lower bound of every comparison."""

from __future__ import annotations

from fedmmkt_strategy.strategies.base import FederatedStrategy


class LocalTraining(FederatedStrategy):
    """Clients train on private data each round and report accuracies; nothing is shared.

    All behaviour is the base round (train.distill without targets, then evaluate); the class
    exists so the baseline has a name in logs and results.
    """
