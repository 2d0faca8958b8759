"""The fusion half of the Byzantine defence, and the attacker kinds of `faults.py`: every forged
reply passes the server's reply checks, an embedding poisoner is found by its leave-one-out
cosine, and the defence's weights take it out of the contrastive aggregation."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.federation.validation import check_inference_reply
from fedmmkt_strategy.runs.inprocess import ensure_task_identity
from fedmmkt_strategy.steps.fusion import contrastive_weights
from fedmmkt_strategy.steps.robust import EMBEDDING_EVIDENCE, ReliabilityTracker, leave_one_out_cosine
from lab.faults import ATTACKS, ByzantineClientApp

N, C, D = 40, 6, 8


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def aligned_clients(k: int = 4, noise: float = 0.3, seed: int = 0) -> np.ndarray:
    """[k, N, D] unit embeddings of k honest clients around one shared signal."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(N, D))
    return unit(signal[None] + noise * rng.normal(size=(k, N, D)))


def test_leave_one_out_cosine_finds_the_sign_flipped_client_and_nan_when_alone():
    reps = aligned_clients()
    reps[3] = -reps[3]
    agreement = leave_one_out_cosine(reps)
    assert agreement[3] == 0.0 and (agreement[:3] > 0.5).all()
    assert np.isnan(leave_one_out_cosine(reps[:1])).all()
    # a client at weight 0 is nobody's evidence
    assert leave_one_out_cosine(reps, np.array([1.0, 1.0, 1.0, 0.0]))[:3] == pytest.approx(
        leave_one_out_cosine(reps[:3])
    )


def test_embedding_weights_wait_for_aligned_heads_then_drop_the_poisoner():
    tracker = ReliabilityTracker(0.5)
    unaligned = unit(np.random.default_rng(1).normal(size=(4, N, D)))  # round 1: random heads
    assert np.median(leave_one_out_cosine(unaligned)) < EMBEDDING_EVIDENCE
    assert tracker.embedding_weights([1, 2, 3, 4], unaligned) == pytest.approx(np.ones(4))
    assert tracker.embedding_history == {}
    poisoned = aligned_clients()
    poisoned[3] = -poisoned[3]
    weights = tracker.embedding_weights([1, 2, 3, 4], poisoned)
    assert weights[3] == 0.0 and (weights[:3] > 0.8).all()
    copy = ReliabilityTracker()
    copy.load_state_dict(tracker.state_dict())
    assert copy.embedding_history == tracker.embedding_history
    old = {"decay": 0.5, "history": {}}  # a checkpoint from before the fusion was defended
    copy.load_state_dict(old)
    assert copy.embedding_history == {}


def test_client_weights_remove_a_client_from_the_contrastive_aggregation():
    reps = torch.as_tensor(aligned_clients())
    anchors = torch.as_tensor(unit(np.random.default_rng(3).normal(size=(N, D))))
    plain = contrastive_weights(reps, anchors, 0.1)
    same = contrastive_weights(reps, anchors, 0.1, client_weights=torch.full((4,), 0.5))
    assert torch.allclose(plain, same, atol=1e-6)  # equal weights change nothing
    defended = contrastive_weights(reps, anchors, 0.1, client_weights=torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert defended[3].max() < 1e-9 and torch.allclose(defended.sum(0), torch.ones(N))


def honest_reply(seed: int = 0) -> tuple[Message, RecordDict]:
    ensure_task_identity()
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(C), size=N).astype(np.float32)
    entropy = (-(probs * np.log(probs)).sum(1)).astype(np.float32)
    content = RecordDict(
        {
            P.CONFIG: ConfigRecord({P.SERVER_ROUND: 2}),
            P.SYNTHETIC: ArrayRecord({P.ROWS: Array(np.arange(N))}),
        }
    )
    msg = Message(content, dst_node_id=104, message_type=P.QUERY_INFER)
    inference = ArrayRecord(
        {
            P.PROBS: Array(probs),
            P.ENTROPY: Array(entropy),
            P.EMBEDDING: Array(unit(rng.normal(size=(N, D)))),
        }
    )
    client = ConfigRecord(
        {
            P.MODALITY: "image",
            P.ARCHITECTURE: "cnn",
            P.PARTITION: 0,
            P.NUM_PARTITIONS: 2,
            P.PARTITION_ID: 4,
        }
    )
    return msg, RecordDict({P.INFERENCE: inference, P.CLIENT: client})


class _Context:
    node_id = 104


@pytest.mark.parametrize("attack", ATTACKS)
def test_every_attacker_kind_forges_a_reply_the_checks_accept(attack):
    msg, honest = honest_reply()
    honest_probs = honest[P.INFERENCE][P.PROBS].numpy().copy()
    honest_embedding = honest[P.INFERENCE][P.EMBEDDING].numpy().copy()

    def app(message, context):
        return Message(honest, reply_to=message)

    prompt = np.arange(N) % C
    faulty = ByzantineClientApp(app, [104], seed=0, attack=attack, prompt_classes=prompt)
    if attack == "free-rider":  # last round's targets, echoed back
        soft = np.random.default_rng(5).dirichlet(np.ones(C), size=5).astype(np.float32)
        targets = ArrayRecord({P.INDICES: Array(np.arange(5)), P.SOFT_LABELS: Array(soft)})
        distill = Message(
            RecordDict({P.CONFIG: ConfigRecord({P.SERVER_ROUND: 1}), P.TARGETS: targets}),
            dst_node_id=104,
            message_type=P.TRAIN_DISTILL,
        )
        faulty(distill, _Context())
    reply = faulty(msg, _Context())
    assert check_inference_reply(reply, N, C, D) is None
    forged = reply.content[P.INFERENCE]
    probs, embedding = forged[P.PROBS].numpy(), forged[P.EMBEDDING].numpy()
    if attack == "embedding-poisoner":
        assert np.allclose(probs, honest_probs) and np.allclose(embedding, -honest_embedding)
    else:
        assert not np.allclose(probs, honest_probs)
    if attack == "prompt-class":
        assert (probs.argmax(1) == prompt).all()
    if attack == "free-rider":  # the echoed rows are last round's soft labels, the rest uniform
        assert probs[5:] == pytest.approx(np.full((N - 5, C), 1 / C))


def test_an_unknown_attack_is_refused_by_name():
    with pytest.raises(ValueError, match="attack must be one of"):
        ByzantineClientApp(lambda m, c: m, [1], attack="sneaky")


def test_the_experiment_table_reports_changes_against_the_clean_run_of_each_seed():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "byzantine_experiment.py"
    spec = importlib.util.spec_from_file_location("byzantine_experiment", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def run(seed, attack, robust, image, text, gen):
        return {
            "seed": seed,
            "attack": attack,
            "robust": robust,
            "honest_image_acc": image,
            "honest_text_acc": text,
            "gen_acc": gen,
            "attacker_counted_vote_share": 0.5,
        }

    runs = [
        run(0, None, "none", 0.40, 0.30, 0.50),
        run(1, None, "none", 0.50, 0.40, 0.60),
        run(0, "label-flipper", "none", 0.30, 0.30, 0.45),
        run(1, "label-flipper", "none", 0.40, 0.40, 0.54),
        run(0, "label-flipper", "reliability", 0.39, 0.30, 0.50),
    ]
    lines = script.table(runs).splitlines()
    assert lines[2] == "| label-flipper | no defence | -10.0 ± 0.0 | +0.0 ± 0.0 | -10.0 ± 0.0 % | 0.50 | 0,1 |"
    assert lines[3].startswith("| label-flipper | defence | -1.0 ± 0.0 | +0.0 ± 0.0 | +0.0 ± 0.0 % |")
