"""Record what LabVote sees each round (client probabilities, entropies, modalities, prompt
classes, and the classes the judge sees in the images), so vote rules can be compared offline.

    python experiments/dump_votes.py --out /tmp/votes --run-config "strategy=fedmd num-server-rounds=3"

Writes one ``round_NNN.npz`` per round next to the run's results folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from flwr.common.config import parse_config_args

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.config import project_defaults
from fedmmkt_strategy.generative.judge import judge_predict
from fedmmkt_strategy.runs.inprocess import run_inprocess
from fedmmkt_strategy.strategies.fedmmkt import FedMMKT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--run-config", default="")
    parser.add_argument("--num-nodes", type=int, default=8)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    original = FedMMKT.vote

    def recording_vote(self, server_round, outcome):
        nodes = sorted(outcome.ok)
        np.savez(
            args.out / f"round_{server_round:03d}.npz",
            probs=self._stack(outcome, P.PROBS, nodes),
            entropy=self._stack(outcome, P.ENTROPY, nodes),
            modality=np.array([self.clients[n][P.MODALITY] for n in nodes]),
            prompt=self.pool.classes,
            depicted=judge_predict(self.models.judge, self.pool.images),
            generation_round=self.pool.generation_round,
        )
        return original(self, server_round, outcome)

    FedMMKT.vote = recording_vote
    config = {**project_defaults(), **parse_config_args([args.run_config] if args.run_config else None)}
    config["results-dir"] = str(args.out / "runs")
    print(run_inprocess(config, args.num_nodes))


if __name__ == "__main__":
    main()
