"""Each kind of malformed `query.infer` reply is rejected with a reason."""

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, RecordDict

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.federation.validation import check_inference_reply
from tests.messages import client_description, reply_to

N, C, D = 5, 4, 8


def _valid_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(C), N).astype(np.float32)
    return {
        P.PROBS: p,
        P.ENTROPY: -(p * np.log(p)).sum(1).astype(np.float32),
        P.EMBEDDING: unit_rows(rng.normal(size=(N, D))).astype(np.float32),
    }


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reply(arrays: dict[str, np.ndarray], client: bool = True) -> Message:
    content = RecordDict({P.INFERENCE: ArrayRecord({k: Array(v) for k, v in arrays.items()})})
    if client:
        content[P.CLIENT] = client_description()
    return reply_to(P.QUERY_INFER, content)


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
    assert "missing ConfigRecord 'client'" in check_inference_reply(_reply(_valid_arrays(), client=False), N, C, D)
    assert "missing ArrayRecord 'inference'" in check_inference_reply(reply_to(P.QUERY_INFER, RecordDict()), N, C, D)


# -- uplink-dtype = "float16": exact dtype, float16 tolerances (validation.py)


def _as(dtype, arrays: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    return {k: v.astype(dtype) for k, v in (arrays or _valid_arrays()).items()}


def test_a_float16_reply_passes_when_the_run_uploads_float16():
    assert check_inference_reply(_reply(_as(np.float16)), N, C, D, "float16") is None


def test_honest_float16_rounding_at_paper_sizes_passes():
    # 102 classes: rounding each probability to float16 moves a row sum by up to ~5e-4, and a
    # near-uniform row's entropy sits at log C, where float16's spacing is ~4e-3
    rng = np.random.default_rng(1)
    n, c = 64, 102
    p = np.vstack([np.full((1, c), 1 / c), rng.dirichlet(np.full(c, 0.3), n - 1)])
    arrays = {
        P.PROBS: p,
        P.ENTROPY: -(p * np.log(np.clip(p, 1e-12, None))).sum(1),
        P.EMBEDDING: unit_rows(rng.normal(size=(n, D))),
    }
    assert check_inference_reply(_reply(_as(np.float16, arrays)), n, c, D, "float16") is None


@pytest.mark.parametrize(
    ("dtype", "configured"), [(np.float16, "float32"), (np.float32, "float16"), (np.float64, "float32")]
)
def test_a_reply_in_another_dtype_than_configured_is_rejected(dtype, configured):
    result = check_inference_reply(_reply(_as(dtype)), N, C, D, configured)
    assert result is not None and "dtype" in result and f"expected {configured}" in result, result


def test_mixed_dtypes_are_rejected():
    arrays = {**_as(np.float16), P.EMBEDDING: _valid_arrays()[P.EMBEDDING]}  # float32 embedding
    result = check_inference_reply(_reply(arrays), N, C, D, "float16")
    assert result is not None and "embedding has dtype float32" in result, result


F16_CORPUS = {
    "nan probabilities": (_with(probs=np.where(np.eye(N, C, dtype=bool), np.nan, p)), "NaN or Inf"),
    "overflow to inf": (_with(embedding=np.full((N, D), 1e5, np.float32)), "NaN or Inf"),  # > 65504
    "sum 1.05": (_with(probs=p * 1.05), "sum to one"),
    "negative probabilities": (_with(probs=np.tile(np.array([1.5, -0.5, 0, 0], np.float32), (N, 1))), "negative"),
    "entropy above log C": (_with(entropy=np.full(N, math.log(C) + 0.05, np.float32)), "entropies outside"),
    "wrong shape": (_with(entropy=np.zeros(N - 1, np.float32)), "shape"),
}


@pytest.mark.parametrize("name", sorted(F16_CORPUS))
def test_malformed_float16_reply_is_rejected_with_a_reason(name):
    arrays, reason = F16_CORPUS[name]
    with np.errstate(over="ignore"):
        arrays = _as(np.float16, arrays)
    result = check_inference_reply(_reply(arrays), N, C, D, "float16")
    assert result is not None and reason in result, result


def test_the_sum_tolerance_follows_the_dtype():
    # |sum - 1| = 5e-3: within float16's 1e-2, beyond float32's 1e-3
    loose = _with(probs=p * 1.005)
    assert check_inference_reply(_reply(_as(np.float16, loose)), N, C, D, "float16") is None
    result = check_inference_reply(_reply(_as(np.float32, loose)), N, C, D, "float32")
    assert result is not None and "tolerance 0.001" in result, result


def test_uplink_dtype_is_validated_by_the_run_config():
    from fedmmkt_strategy.config import ConfigError, RunConfig

    assert RunConfig.from_run_config({}).uplink_dtype == "float32"
    assert RunConfig.from_run_config({"uplink-dtype": "float16"}).uplink_dtype == "float16"
    with pytest.raises(ConfigError, match="uplink-dtype"):
        RunConfig.from_run_config({"uplink-dtype": "bfloat16"})
