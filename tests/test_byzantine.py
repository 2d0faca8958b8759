"""Byzantine clients: 20 % of the clients send confident wrong votes; the reliability defence
(`labvote-robust = "reliability"`) must find them and take the vote back."""

import json

import numpy as np
import pytest

from client_app.app import app as client_app
from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.runs.inprocess import InProcessGrid
from fedmmkt_strategy.runs.runner import run_federation
from fedmmkt_strategy.steps.robust import reliability_weights
from lab.faults import ByzantineClientApp

NODES = 5  # TINY_FEDERATION's four roles, repeated: node 104 is a second image:cnn
BYZANTINE = 104


def voted_labels(grid: InProcessGrid, server_round: int) -> dict[int, int]:
    """Pool row -> voted label, from the targets the server sent in `server_round`."""
    for msg in grid.sent:
        if msg.metadata.message_type == P.TRAIN_DISTILL and msg.metadata.group_id == str(server_round):
            targets = msg.content[P.TARGETS]
            labels = targets[P.SOFT_LABELS].numpy().argmax(1)
            return dict(zip(targets[P.INDICES].numpy().tolist(), labels.tolist()))
    return {}


def run_attacked(tmp_path, micro_run_config, robust: str):
    # beta = 1 counts every vote (the micro models are too uncertain for 0.5): the liars' weight 1
    # then faces honest weights far below 1, the worst case for an undefended vote
    rc = {
        **micro_run_config,
        "num-server-rounds": 1,
        "labvote-beta": 1.0,
        # the paper's LabVote: class-aware weights would make the liar's say depend on its counts
        "labvote-class-weights": "none",
        "labvote-robust": robust,
        "results-dir": str(tmp_path),
        "run-name": robust,
    }
    app = ByzantineClientApp(client_app, [BYZANTINE], seed=0)
    grid = InProcessGrid(app, rc, NODES)
    metrics = json.loads((run_federation(grid, rc) / "metrics.json").read_text())
    votes = voted_labels(grid, 1)
    lies = app.injected[(1, BYZANTINE)]
    taken = np.mean([label == lies[row] for row, label in votes.items()])
    return metrics, float(taken)


def test_an_undefended_vote_is_taken_by_one_confident_liar(tmp_path, micro_run_config):
    metrics, taken = run_attacked(tmp_path, micro_run_config, "none")
    assert not metrics["failures"]  # the lies pass every reply check: only the vote can catch them
    assert taken > 0.9


def test_the_defence_scores_every_client_and_weighs_the_vote_with_it(tmp_path, micro_run_config):
    # The micro server models render noise, so honest clients agree with each other no more than
    # the liar does and nobody can be told apart here (tests/test_robust.py and
    # docs/robustness.md show the defence where there is signal). This checks the wiring: every
    # client's agreement enters the history and its weight is the function of it the vote used.
    metrics, taken = run_attacked(tmp_path, micro_run_config, "reliability")
    clients = sorted(metrics["rounds"][-1]["clients"], key=lambda c: c["node_id"])
    agreement = np.array([c["vote_agreement"] for c in clients])
    assert np.array([c["reliability"] for c in clients]) == pytest.approx(reliability_weights(agreement))
    assert len(clients) == NODES and metrics["config"]["labvote-robust"] == "reliability"
    # the fusion is defended too: every client's weight in its modality's contrastive aggregation
    # is scaled by its embedding reliability, recorded per round
    assert all(0.0 <= c["embedding_reliability"] <= 1.0 for c in clients)
