"""Node sampling with a deadline and a quorum.

Flower's `sample_nodes` waits forever when too few nodes are connected. Here the wait is
bounded: after `deadline` seconds with fewer than `min_nodes` nodes the run fails with a reason.
Simulated SuperNodes register asynchronously, so the first sampling also waits until the node
count has been stable for `settle` seconds; later rounds take whoever is connected.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from logging import INFO

import numpy as np
from flwr.common.logger import log
from flwr.serverapp import Grid


class QuorumError(RuntimeError):
    """Too few nodes or replies to go on; the run fails with this reason."""


class NodeSampler:
    """Samples `fraction` of the connected nodes (at least `min_nodes`), seeded per round.

    Parameters
    ----------
    min_nodes : int
        Quorum: fewer connected nodes than this after `deadline` seconds fails the run.
    fraction : float
        Share of connected nodes sampled each round (at least `min_nodes`).
    deadline : float
        Seconds to wait for the quorum before failing.
    settle : float
        Seconds the node count must stay unchanged on the first sampling.
    seed : int
        Seeds the per-round choice of nodes.
    """

    def __init__(
        self,
        min_nodes: int,
        fraction: float = 1.0,
        deadline: float = 120.0,
        settle: float = 2.0,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.min_nodes, self.fraction, self.deadline, self.settle = min_nodes, fraction, deadline, settle
        self.seed = seed
        self._clock, self._sleep = clock, sleep
        self._settled = False

    def wait_for_nodes(self, grid: Grid) -> list[int]:
        """Connected node ids once the quorum is met (and, the first time, stable)."""
        start = self._clock()
        last_change, last_count = start, -1
        while True:
            nodes = sorted(grid.get_node_ids())
            now = self._clock()
            if len(nodes) != last_count:
                last_change, last_count = now, len(nodes)
            enough = len(nodes) >= self.min_nodes
            if enough and (self._settled or now - last_change >= self.settle):
                self._settled = True
                return nodes
            if now - start >= self.deadline:
                if enough:
                    return nodes
                raise QuorumError(
                    f"only {len(nodes)} of the required {self.min_nodes} nodes connected within "
                    f"{self.deadline:.0f} s (run-config keys min-nodes, sample-deadline)"
                )
            self._sleep(0.5)

    def sample(self, grid: Grid, server_round: int) -> list[int]:
        """The nodes of this round, sorted."""
        nodes = self.wait_for_nodes(grid)
        k = min(len(nodes), max(self.min_nodes, math.ceil(self.fraction * len(nodes))))
        rng = np.random.default_rng([self.seed, server_round])
        # Choose positions, not ids: node ids are uint64 and numpy would turn them into floats.
        chosen = sorted(nodes[int(i)] for i in rng.choice(len(nodes), size=k, replace=False))
        log(INFO, "round %d: sampled %d of %d connected nodes", server_round, k, len(nodes))
        return chosen
