"""Each kind of malformed `query.infer` reply is rejected with a reason."""

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.inprocess import ensure_task_identity
from fedmmkt_strategy.validation import check_inference_reply

N, C, D = 5, 4, 8


def _valid_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(C), N).astype(np.float32)
    return {
        P.PROBS: p,
        P.ENTROPY: -(p * np.log(p)).sum(1).astype(np.float32),
        P.EMBEDDING: rng.normal(size=(N, D)).astype(np.float32),
    }


def _reply(arrays: dict[str, np.ndarray], client: bool = True) -> Message:
    ensure_task_identity()
    query = Message(RecordDict(), dst_node_id=7, message_type=P.QUERY_INFER)
    query.metadata.__dict__["_message_id"] = "q"
    content = RecordDict({P.INFERENCE: ArrayRecord({k: Array(v) for k, v in arrays.items()})})
    if client:
        content[P.CLIENT] = ConfigRecord({P.MODALITY: "image"})
    return Message(content, reply_to=query)


def _with(**changes) -> dict[str, np.ndarray]:
    arrays = _valid_arrays()
    for key, value in changes.items():
        key = key.replace("_", "-")
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    return arrays


def test_a_valid_reply_passes():
    assert check_inference_reply(_reply(_valid_arrays()), N, C, D) is None


p = _valid_arrays()[P.PROBS]
CORPUS = {
    "nan probabilities": (_with(probs=np.where(np.eye(N, C, dtype=bool), np.nan, p).astype(np.float32)), "NaN or Inf"),
    "inf embedding": (_with(embedding=np.full((N, D), np.inf, np.float32)), "NaN or Inf"),
    "wrong class count": (_with(probs=np.full((N, C + 1), 1 / (C + 1), np.float32)), "shape"),
    "wrong sample count": (_with(entropy=np.zeros(N - 1, np.float32)), "shape"),
    "wrong embedding width": (_with(embedding=np.zeros((N, D * 2), np.float32)), "shape"),
    "oversized array": (_with(embedding=np.zeros((N * 1000, D), np.float32)), "shape"),
    "integer dtype": (_with(probs=np.ones((N, C), np.int64)), "dtype"),
    "string dtype": (_with(entropy=np.array(["x"] * N)), "dtype"),
    "not summing to one": (_with(probs=(p * 2).astype(np.float32)), "sum to one"),
    "negative probabilities": (_with(probs=np.tile(np.array([1.5, -0.5, 0, 0], np.float32), (N, 1))), "negative"),
    "negative entropy": (_with(entropy=np.full(N, -1.0, np.float32)), "entropies outside"),
    "entropy above log C": (_with(entropy=np.full(N, math.log(C) + 1, np.float32)), "entropies outside"),
    "missing key": (_with(entropy=None), "missing ['entropy']"),
    "extra key": ({**_valid_arrays(), "gradients": np.zeros(3, np.float32)}, "unexpected ['gradients']"),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_malformed_reply_is_rejected_with_a_reason(name):
    arrays, reason = CORPUS[name]
    result = check_inference_reply(_reply(arrays), N, C, D)
    assert result is not None and reason in result, result


def test_reply_without_inference_or_client_record_is_rejected():
    ensure_task_identity()
    assert "missing ConfigRecord 'client'" in check_inference_reply(_reply(_valid_arrays(), client=False), N, C, D)
    query = Message(RecordDict(), dst_node_id=7, message_type=P.QUERY_INFER)
    query.metadata.__dict__["_message_id"] = "q"
    assert "missing ArrayRecord 'inference'" in check_inference_reply(Message(RecordDict(), reply_to=query), N, C, D)
