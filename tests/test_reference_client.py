"""The reference ClientApp of examples/reference_client (written from docs/protocol.md alone)
passes every check of the server, in-process: each strategy family runs without a single
failure in metrics.json, alone and next to this project's own ClientApp."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.federation.validation import check_inference_reply
from fedmmkt_strategy.generative.server_models import load_server_models
from fedmmkt_strategy.reporting.results import RunRecorder, make_run_dir
from fedmmkt_strategy.runs.inprocess import InProcessGrid, load_client_app
from fedmmkt_strategy.strategies.factory import build_strategy
from tests.conftest import INPROCESS_FEDERATION
from worlds import domain

REFERENCE = "examples.reference_client.app:app"
TINY = INPROCESS_FEDERATION


@pytest.fixture(scope="module")
def reference_app():
    return load_client_app(REFERENCE)


def _run(tmp_path, run_config: dict, client_app, models=None) -> tuple[InProcessGrid, dict]:
    config = RunConfig.from_run_config({**run_config, "results-dir": str(tmp_path)})
    grid = InProcessGrid(client_app, run_config, 4)
    recorder = RunRecorder(make_run_dir(config.results_path, config.strategy), config.as_run_config(), config.strategy)
    build_strategy(config, recorder, models).start(
        grid=grid, initial_arrays=ArrayRecord(), num_rounds=config.num_server_rounds, timeout=60
    )
    recorder.write()
    return grid, json.loads((recorder.run_dir / "metrics.json").read_text())


def _assert_all_accepted(metrics: dict) -> None:
    assert metrics["failures"] == []
    last = metrics["rounds"][-1]["clients"]
    assert sorted(c["node_id"] for c in last if "acc_global" in c) == [100, 101, 102, 103]
    assert {c["modality"] for c in last} == {"image", "text"}


@pytest.mark.parametrize("strategy", ["local", "fedavg"])
def test_the_reference_client_passes_the_servers_checks(tmp_path, reference_app, strategy):
    grid, metrics = _run(tmp_path, {**TINY, "strategy": strategy}, reference_app)
    _assert_all_accepted(metrics)
    a = grid.contexts[100].state["model"].to_torch_state_dict()  # image:cnn
    b = grid.contexts[102].state["model"].to_torch_state_dict()  # image:cnn
    same = all(torch.equal(a[k], b[k]) for k in a)
    assert same == (strategy == "fedavg")  # fedavg: both evaluated the architecture's mean last


def test_the_reference_client_and_ours_share_a_fedavg_group(tmp_path, reference_app):
    """Nodes 100 and 101 run the reference client, 102 and 103 ours: the image:cnn group mixes
    both (same seeded initial weights, same state_dict keys, shapes and dtypes)."""
    ours = load_client_app()

    def mixed(msg: Message, context: Context) -> Message:
        return (reference_app if context.node_id < 102 else ours)(msg, context)

    _, metrics = _run(tmp_path, {**TINY, "strategy": "fedavg"}, mixed)
    _assert_all_accepted(metrics)


def _query(n: int = 12) -> RecordDict:
    s = domain.generate(np.arange(n) % domain.NUM_CLASSES, seed=9)
    pool = ArrayRecord(
        {
            P.IMAGES: Array(s.images),
            P.CAPTIONS: Array(np.array([c[0] for c in s.captions])),
            P.ROWS: Array(np.arange(n)),
            P.POOL_SIZE: Array(np.array([n])),
        }
    )
    config = ConfigRecord({P.SERVER_ROUND: 1, P.NUM_CLASSES: domain.NUM_CLASSES, P.SEND_LABEL_COUNTS: True})
    return RecordDict({P.SYNTHETIC: pool, P.CONFIG: config})


@pytest.mark.parametrize(
    "overrides", [{}, {"uplink-dtype": "float16"}, {"dp-noise-multiplier": 0.5, "uplink-dtype": "float16"}]
)
def test_query_replies_pass_the_inference_checks(reference_app, overrides):
    run_config = {**TINY, **overrides}
    grid = InProcessGrid(reference_app, run_config, 4)
    dtype = RunConfig.from_run_config(run_config).uplink_dtype
    for node in (100, 101):  # an image and a text node
        msg = Message(_query(), dst_node_id=node, message_type=P.QUERY_INFER)
        [reply] = grid.pull_messages(grid.push_messages([msg]))
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        assert check_inference_reply(reply, 12, domain.NUM_CLASSES, 128, dtype) is None
        assert len(reply.content[P.CLIENT][P.LABEL_COUNTS]) == domain.NUM_CLASSES


def test_a_partial_pool_update_without_a_pool_fails_and_captions_are_widened(reference_app):
    from examples.reference_client.app import POOL, update_pool

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})

    def update(rows: list[int], captions: list[str]) -> ArrayRecord:
        return ArrayRecord(
            {
                P.ROWS: Array(np.array(rows, np.int64)),
                P.POOL_SIZE: Array(np.array([3], np.int64)),
                P.CAPTIONS: Array(np.array(captions)),
            }
        )

    with pytest.raises(RuntimeError, match="hold no pool"):
        update_pool(context, "text", update([1], ["b"]))
    update_pool(context, "text", update([2, 0, 1], ["c", "a", "b"]))
    update_pool(context, "text", update([1], ["a much longer caption"]))
    assert list(context.state[POOL][P.CAPTIONS].numpy()) == ["a", "a much longer caption", "c"]


@pytest.fixture(scope="module")
def micro_models(micro_run_config):
    return load_server_models(RunConfig.from_run_config(micro_run_config))


def test_the_reference_client_passes_a_fedmmkt_run(tmp_path, reference_app, micro_run_config, micro_models):
    """Query, cached pool, soft labels and fused targets: a whole fedmmkt run on micro server models
    (labvote-beta = 1 keeps every voted row: the micro models' votes are too uncertain otherwise)."""
    run_config = {**micro_run_config, "strategy": "fedmmkt", "labvote-beta": 1.0}
    grid, metrics = _run(tmp_path, run_config, reference_app, micro_models)
    _assert_all_accepted(metrics)
    trains = [m for m in grid.sent if m.metadata.message_type == P.TRAIN_DISTILL]
    assert all(P.TARGETS in m.content.array_records for m in trains)  # every node got targets, every round
    assert all(c["kl"] > 0 and c["synthetic_visits"] > 0 for c in metrics["rounds"][-1]["clients"])
