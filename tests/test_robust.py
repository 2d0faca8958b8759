"""The Byzantine defence: leave-one-out agreement, history, reliability weights, weighted LabVote."""

import math

import numpy as np
import pytest

from fedmmkt_strategy.steps.labvote import labvote
from fedmmkt_strategy.steps.robust import (
    ReliabilityTracker,
    leave_one_out_agreement,
    reliability_weights,
    update_history,
)
from lab.faults import confident_wrong_votes


def one_hot(labels: list[list[int]], c: int = 3) -> np.ndarray:
    return np.eye(c, dtype=np.float32)[np.array(labels)]


def test_leave_one_out_agreement_by_hand():
    # top-1 classes of four clients on two samples: A and B agree, C half, the liar never
    probs = one_hot([[0, 1], [0, 1], [0, 2], [2, 0]])
    # A, s0: others B0 C0 L2 -> support(0)=2 of max 2 -> 1; s1: B1 C2 L0 -> 1 of max 1 -> 1
    # C, s1: others A1 B1 L0 -> support(2) = 0 -> 0; the liar: nobody else names its classes
    assert leave_one_out_agreement(probs).tolist() == [1.0, 1.0, 0.5, 0.0]
    # with the liar's reliability at 0, A's s1 support: B1 C2 -> 1 of max 1, still 1
    assert leave_one_out_agreement(probs, np.array([1, 1, 1, 0])).tolist() == [1.0, 1.0, 0.5, 0.0]


def test_agreement_is_nan_without_anyone_to_compare_with():
    assert np.isnan(leave_one_out_agreement(one_hot([[0, 1]]))).all()


def test_reliability_weights_relative_to_the_median_squared():
    # median 0.75: ratios 4/3 (capped), 1.33, 2/3, 0
    assert reliability_weights(np.array([1.0, 1.0, 0.5, 0.0])) == pytest.approx([1, 1, 4 / 9, 0])
    assert reliability_weights(np.array([0.0, 0.0])).tolist() == [1.0, 1.0]  # no evidence: nobody punished
    assert reliability_weights(np.array([np.nan, 0.5])).tolist() == [1.0, 1.0]  # unknown: full weight


def test_history_is_a_moving_average_and_ignores_nan():
    history: dict[int, float] = {}
    update_history(history, [7, 8], np.array([0.8, np.nan]), decay=0.5)
    assert history == {7: 0.8}
    update_history(history, [7, 8], np.array([0.2, 0.4]), decay=0.5)
    assert history == {7: pytest.approx(0.5), 8: 0.4}


def test_labvote_client_weights_multiply_the_entropy_weights():
    probs = np.array([[[0.9, 0.1]], [[0.2, 0.8]]], dtype=np.float32)
    entropy = np.zeros((2, 1))  # both fully confident: weights 1 and 1
    assert labvote(probs, entropy, 1.0).soft_labels[0] == pytest.approx([0.55, 0.45])
    weighted = labvote(probs, entropy, 1.0, client_weights=np.array([1.0, 0.25]))
    assert weighted.soft_labels[0] == pytest.approx([(0.9 + 0.05) / 1.25, (0.1 + 0.2) / 1.25])
    silenced = labvote(probs, entropy, 1.0, client_weights=np.array([0.0, 1.0]))
    assert silenced.counted[:, 0].tolist() == [False, True] and silenced.labels[0] == 1


def _attacked_federation(seed: int, honest: int = 8, liars: int = 2, n: int = 200, c: int = 24, collude: bool = False):
    """Honest clients right half of the time, 0.8 on their top class (normalised entropy 0.36, so
    their votes count at beta = 0.5); liars one-hot (weight 1) and wrong."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(c, size=n)
    probs = []
    for _ in range(honest):
        top = np.where(rng.random(n) < 0.5, truth, rng.integers(c, size=n))
        p = np.full((n, c), 0.2 / (c - 1))
        p[np.arange(n), top] = 0.8
        probs.append(p)
    shared_lie = (truth + rng.integers(1, c, size=n)) % c
    for _ in range(liars):
        lie = shared_lie if collude else (truth + rng.integers(1, c, size=n)) % c
        probs.append(np.eye(c)[lie])
    probs = np.stack(probs).astype(np.float32)
    entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(-1)
    return probs, entropy, truth


@pytest.mark.parametrize("collude", [False, True])
def test_reliability_defence_takes_the_vote_back_from_20_percent_liars(collude):
    probs, entropy, truth = _attacked_federation(seed=3, collude=collude)
    undefended = labvote(probs, entropy, beta=0.5)
    tracker = ReliabilityTracker(decay=0.5)
    weights = tracker.weights(list(range(10)), probs)
    defended = labvote(probs, entropy, beta=0.5, client_weights=weights)
    # colluding liars vouch for each other, so they keep more weight (about 0.4) than lone ones
    assert weights[8:].max() < (0.5 if collude else 0.1) < 0.75 < weights[:8].min()
    accuracy = lambda r: (r.labels[r.kept] == truth[r.kept]).mean()  # noqa: E731
    assert accuracy(defended) > 0.9 and accuracy(defended) > accuracy(undefended) + 0.01
    assert defended.kept.mean() > 0.9
    if collude:  # the attack that works without the defence
        assert accuracy(undefended) < 0.8


def test_tracker_state_round_trips():
    tracker = ReliabilityTracker(0.3)
    tracker.weights([5, 6, 7], one_hot([[0, 1], [0, 1], [2, 2]]))
    copy = ReliabilityTracker()
    copy.load_state_dict(tracker.state_dict())
    assert copy.history == tracker.history and copy.decay == 0.3


def test_confident_wrong_votes_are_one_hot_wrong_and_pass_as_valid():
    honest = np.random.default_rng(0).dirichlet(np.ones(24), size=50).astype(np.float32)
    probs, entropy, labels = confident_wrong_votes(honest, np.random.default_rng(1))
    assert (labels != honest.argmax(1)).all() and (probs.argmax(1) == labels).all()
    assert probs.sum(1) == pytest.approx(np.ones(50)) and (entropy == 0).all()
    assert 0 <= entropy.max() <= math.log(24)
