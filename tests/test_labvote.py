import math

import numpy as np
import pytest

from fedmmkt_strategy.steps.labvote import (
    labvote,
    mix_prompt,
    most_confident,
    normalised_entropy,
    plain_average,
    prompt_class_weights,
    vote_diagnostics,
)

C = 4
LOGC = math.log(C)


def _entropy_for(h: float) -> float:
    return h * LOGC


def test_labvote_three_clients_two_samples_by_hand():
    # sample 0: client A confident class 1 (h=0.2), client B fairly confident class 2 (h=0.4),
    #           client C uncertain (h=0.9, its vote does not count)
    # sample 1: everybody uncertain -> discarded
    probs = np.array(
        [
            [[0.1, 0.7, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]],
            [[0.1, 0.1, 0.8, 0.0], [0.25, 0.25, 0.25, 0.25]],
            [[0.0, 0.0, 0.0, 1.0], [0.25, 0.25, 0.25, 0.25]],
        ],
        dtype=np.float32,
    )
    h = np.array([[0.2, 0.9], [0.4, 0.95], [0.9, 0.6]])
    result = labvote(probs, h * LOGC, beta=0.5)
    # weights 0.8 and 0.6 -> q = (0.8*pA + 0.6*pB) / 1.4
    expected = (0.8 * probs[0, 0] + 0.6 * probs[1, 0]) / 1.4
    assert np.allclose(result.soft_labels[0], expected)
    assert result.soft_labels[0].sum() == pytest.approx(1.0)
    # class 1: (0.8*0.7 + 0.6*0.1) / 1.4 = 0.443; class 2: (0.8*0.1 + 0.6*0.8) / 1.4 = 0.4
    assert result.soft_labels[0, 1] == pytest.approx(0.62 / 1.4)
    assert result.soft_labels[0, 2] == pytest.approx(0.56 / 1.4)
    assert result.labels.tolist() == [1, -1]
    assert result.confidence[0] == pytest.approx(0.62 / 1.4)
    assert result.kept.tolist() == [True, False]
    assert result.counted.tolist() == [[True, False], [True, False], [False, False]]
    assert np.all(result.soft_labels[1] == 0)


def test_votes_at_exactly_beta_count_and_all_discarded_is_handled():
    probs = np.full((2, 3, C), 1 / C, dtype=np.float32)
    result = labvote(probs, np.full((2, 3), LOGC), beta=0.5)
    assert not result.kept.any() and (result.labels == -1).all()
    diag = vote_diagnostics(result, np.zeros(3, dtype=np.int64))
    assert diag["discard_rate"] == 1.0 and math.isnan(diag["vote_prompt_agreement"])
    edge = labvote(probs[:1, :1], np.array([[0.5 * LOGC]]), beta=0.5)
    assert edge.kept.tolist() == [True]


def test_ties_resolve_to_the_lowest_class_deterministically():
    probs = np.array([[[0.5, 0.5, 0.0, 0.0]], [[0.0, 0.0, 0.5, 0.5]]], dtype=np.float32)
    result = labvote(probs, np.full((2, 1), 0.1 * LOGC))
    assert result.labels.tolist() == [0]


def test_label_correction_and_diagnostics():
    # both clients say class 3 for a sample prompted as class 0
    probs = np.zeros((2, 2, C), dtype=np.float32)
    probs[:, 0, 3] = 1.0
    probs[:, 1, 1] = 1.0
    result = labvote(probs, np.zeros((2, 2)))
    diag = vote_diagnostics(result, prompt_classes=np.array([0, 1]))
    assert result.labels.tolist() == [3, 1]
    assert diag["vote_prompt_agreement"] == 0.5
    assert diag["counted_vote_share"] == [1.0, 1.0]


def test_depicted_class_diagnostics_say_whether_the_vote_beats_the_prompt():
    # sample 0 is prompted as 0 but depicts 3 (the vote is right, the prompt wrong);
    # sample 1 is prompted and depicted as 1 and voted 1; sample 2 has no counted vote
    probs = np.zeros((2, 3, C), dtype=np.float32)
    probs[:, 0, 3] = 1.0
    probs[:, 1, 1] = 1.0
    probs[:, 2] = 1.0 / C
    entropy = np.array([[0.0, 0.0, LOGC], [0.0, 0.0, LOGC]])
    result = labvote(probs, entropy)
    diag = vote_diagnostics(result, prompt_classes=np.array([0, 1, 2]), depicted_classes=np.array([3, 1, 5]))
    assert diag["vote_depicted_agreement"] == 1.0
    assert diag["prompt_depicted_agreement_kept"] == 0.5
    assert diag["prompt_depicted_agreement"] == 1 / 3


def test_normalised_entropy_is_clipped():
    assert normalised_entropy(np.array([-0.1, LOGC * 1.01]), C).tolist() == [0.0, 1.0]


def test_plain_average_keeps_everything():
    probs = np.array([[[1.0, 0, 0, 0]], [[0, 1.0, 0, 0]]], dtype=np.float32)
    result = plain_average(probs)
    assert result.kept.all() and np.allclose(result.soft_labels, [[0.5, 0.5, 0, 0]])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="entropy has shape"):
        labvote(np.zeros((2, 3, C)), np.zeros((3, 2)))


def test_prompt_mix_moves_mass_to_the_prompt_and_keeps_discards():
    probs = np.zeros((1, 2, C), dtype=np.float32)
    probs[0, 0, 3] = 1.0
    probs[0, 1] = 1.0 / C
    result = labvote(probs, np.array([[0.0, LOGC]]))  # sample 1 has no counted vote
    mixed = mix_prompt(result, np.array([0, 0]), 0.25)
    assert np.allclose(mixed.soft_labels[0, [0, 3]], [0.25, 0.75])
    assert mixed.labels.tolist() == [3, -1] and mixed.kept.tolist() == [True, False]
    assert np.isclose(mixed.confidence[0], 0.75)
    assert mix_prompt(result, np.array([0, 0]), 0.75).labels.tolist() == [0, -1]
    assert mix_prompt(result, np.array([0, 0]), 0.0) is result


def test_most_confident_picks_the_top_share_of_kept_samples():
    probs = np.zeros((1, 4, C), dtype=np.float32)
    for i, top in enumerate([0.5, 0.9, 0.7, 0.8]):
        probs[0, i, 0], probs[0, i, 1] = top, 1 - top
    entropy = np.array([[0.1, 0.1, 0.1, 20.0]]) * LOGC / 20.0 * 4  # last one discarded (h > beta)
    result = labvote(probs, entropy)
    assert result.kept.tolist() == [True, True, True, False]
    assert most_confident(result, 0.5).tolist() == [1, 2]
    assert most_confident(result, 0.01).tolist() == [1]
    assert most_confident(result, 1.0).tolist() == [1, 2, 0]


def test_prompt_class_weights_by_hand():
    # clients A, B, C; classes 0..3. Sample 0 was prompted for class 1, sample 1 for class 3.
    counts = np.array([[5, 30, 0, 0], [5, 10, 0, 0], [0, 0, 9, 0]])
    weights = prompt_class_weights(counts, np.array([1, 3]))
    np.testing.assert_allclose(weights[:, 0], [0.75, 0.25, 0.0])
    np.testing.assert_allclose(weights[:, 1], [0.0, 0.0, 0.0])  # nobody saw class 3


def test_a_client_that_never_saw_the_prompted_class_does_not_vote():
    # both clients are confident; only A has seen class 1, the class sample 0 was rendered for
    probs = np.array([[[0.0, 0.9, 0.1, 0.0]], [[0.0, 0.0, 0.05, 0.95]]], dtype=np.float32)
    h = np.array([[0.1], [0.05]])
    plain = labvote(probs, h * LOGC, beta=0.5)
    aware = labvote(
        probs,
        h * LOGC,
        beta=0.5,
        sample_weights=prompt_class_weights(np.array([[9, 9, 0, 0], [0, 0, 0, 9]]), np.array([1])),
    )
    assert plain.labels[0] == 3  # B is the more confident, and wrong
    assert aware.labels[0] == 1 and aware.counted[:, 0].tolist() == [True, False]
    np.testing.assert_allclose(aware.soft_labels[0], probs[0, 0])


def test_group_diagnostics_split_the_vote_by_prompt_class():
    probs = np.array([[[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.5, 0.5]]], dtype=np.float32)
    entropy = -(probs * np.log(probs)).sum(-1)
    result = labvote(probs, entropy, beta=0.9)
    prompts, depicted = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    groups = {"confused": np.array([False, False, True, True]), "clean": np.array([True, True, False, False])}
    diag = vote_diagnostics(result, prompts, depicted, groups)
    assert diag["clean_vote_depicted_agreement"] == 1.0 and diag["clean_prompt_depicted_agreement_kept"] == 0.5
    assert diag["confused_discard_rate"] == 0.5  # the uniform vote is discarded
    assert diag["confused_vote_depicted_agreement"] == 1.0 and diag["confused_prompt_depicted_agreement"] == 0.5


def test_hardened_votes_are_the_one_hot_decisions_of_the_kept_samples_at_full_confidence():
    from fedmmkt_strategy.steps.labvote import hardened

    probs = np.zeros((1, 2, C), dtype=np.float32)
    probs[0, 0] = [0.1, 0.6, 0.2, 0.1]
    probs[0, 1] = 1.0 / C
    result = labvote(probs, np.array([[0.1, LOGC]]))  # sample 1 has no counted vote
    hard = hardened(result)
    assert hard.soft_labels.tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]
    assert hard.labels.tolist() == [1, -1] and hard.kept.tolist() == [True, False]
    assert hard.confidence.tolist() == [1.0, 0.0]
    assert np.array_equal(result.soft_labels[0], probs[0, 0])  # the vote itself is untouched
