"""The ClientApp handlers and the strategies, run in-process through a InProcessGrid (no Ray)."""

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from client_app.app import app as client_app
from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.federation.sampling import QuorumError
from fedmmkt_strategy.reporting.results import RunRecorder, make_run_dir
from fedmmkt_strategy.runs.inprocess import InProcessGrid
from fedmmkt_strategy.strategies.factory import build_strategy
from tests.conftest import INPROCESS_FEDERATION
from worlds import domain

TINY = INPROCESS_FEDERATION


def _run(tmp_path, strategy: str, grid: InProcessGrid | None = None, **overrides):
    rc = {**TINY, "strategy": strategy, "results-dir": str(tmp_path), **overrides}
    config = RunConfig.from_run_config(rc)
    grid = grid or InProcessGrid(client_app, rc, 4)
    recorder = RunRecorder(make_run_dir(config.results_path, strategy), config.as_run_config(), strategy)
    build_strategy(config, recorder).start(
        grid=grid, initial_arrays=ArrayRecord(), num_rounds=config.num_server_rounds, timeout=60
    )
    recorder.write()
    return grid, recorder


def _message(grid: InProcessGrid, node: int, message_type: str, content: RecordDict) -> Message:
    msg = Message(content, dst_node_id=node, message_type=message_type)
    [mid] = grid.push_messages([msg])
    [reply] = grid.pull_messages([mid])
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    return reply


def _synthetic(n: int = 6) -> RecordDict:
    s = domain.generate(np.arange(n) % domain.NUM_CLASSES, seed=9)
    pool = ArrayRecord(
        {
            P.IMAGES: Array(s.images),
            P.CAPTIONS: Array(np.array([c[0] for c in s.captions])),
            P.ROWS: Array(np.arange(n)),
            P.POOL_SIZE: Array(np.array([n])),
        }
    )
    return RecordDict({P.SYNTHETIC: pool, P.CONFIG: ConfigRecord({P.SERVER_ROUND: 1})})


def test_query_infer_returns_outputs_for_each_modality():
    grid = InProcessGrid(client_app, TINY, 4)
    for node, modality in [(100, "image"), (101, "text")]:
        reply = _message(grid, node, P.QUERY_INFER, _synthetic())
        out = reply.content[P.INFERENCE]
        assert out[P.PROBS].numpy().shape == (6, domain.NUM_CLASSES)
        assert np.allclose(out[P.PROBS].numpy().sum(-1), 1, atol=1e-5)
        assert out[P.ENTROPY].numpy().shape == (6,)
        assert out[P.EMBEDDING].numpy().shape == (6, 128)
        assert reply.content[P.CLIENT][P.MODALITY] == modality


def test_train_distill_uses_targets_and_persists_the_model():
    grid = InProcessGrid(client_app, TINY, 4)
    content = _synthetic()
    q = np.full((3, domain.NUM_CLASSES), 1 / domain.NUM_CLASSES, dtype=np.float32)
    fused = np.eye(3, 128, dtype=np.float32)
    content[P.TARGETS] = ArrayRecord(
        {P.SOFT_LABELS: Array(q), P.FUSED: Array(fused), P.INDICES: Array(np.array([0, 2, 4]))}
    )
    reply = _message(grid, 101, P.TRAIN_DISTILL, content)
    metrics = reply.content[P.METRICS]
    assert metrics["kl"] > 0 and metrics["rep"] > 0 and metrics[P.NUM_EXAMPLES] > 0
    assert "model" in grid.contexts[101].state
    assert P.ARRAYS not in reply.content.array_records  # weights stay on the client unless asked
    plain = _message(grid, 100, P.TRAIN_DISTILL, RecordDict({P.CONFIG: ConfigRecord({P.SERVER_ROUND: 1})}))
    assert plain.content[P.METRICS]["kl"] == 0


def test_evaluate_reports_local_and_global_accuracy():
    grid = InProcessGrid(client_app, TINY, 4)
    reply = _message(grid, 100, P.EVALUATE, RecordDict({P.CONFIG: ConfigRecord({P.SERVER_ROUND: 1})}))
    m = reply.content[P.METRICS]
    assert 0 <= m[P.ACC_LOCAL] <= 1 and 0 <= m[P.ACC_GLOBAL] <= 1


def test_a_node_of_another_world_fails_the_message_by_its_class_count():
    grid = InProcessGrid(client_app, TINY, 4)
    content = _synthetic()
    content[P.CONFIG][P.NUM_CLASSES] = 7
    [mid] = grid.push_messages([Message(content, dst_node_id=100, message_type=P.QUERY_INFER)])
    [reply] = grid.pull_messages([mid])
    assert reply.has_error() and f"7 classes, this node's {domain.NUM_CLASSES}" in reply.error.reason


def test_local_strategy_writes_results(tmp_path):
    _, recorder = _run(tmp_path, "local")
    data = json.loads((recorder.run_dir / "metrics.json").read_text())
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    clients = data["rounds"][1]["clients"]
    assert len(clients) == 4 and all("acc_global" in c and c["bytes_up"] > 0 for c in clients)
    assert (recorder.run_dir / "metrics.csv").read_text().count("\n") == 9
    assert (recorder.run_dir / "accuracy.png").exists()


def test_fedavg_gives_clients_of_one_architecture_the_same_weights(tmp_path):
    grid, _ = _run(tmp_path, "fedavg")
    # every message announces the world (docs/protocol.md): C and the class names, in label order
    assert grid.sent and all(
        m.content[P.CONFIG][P.NUM_CLASSES] == domain.NUM_CLASSES
        and list(m.content[P.CONFIG][P.CLASS_NAMES]) == domain.class_names()
        for m in grid.sent
    )
    a = grid.contexts[100].state["model"].to_torch_state_dict()  # image:cnn
    b = grid.contexts[102].state["model"].to_torch_state_dict()  # image:cnn
    assert all(torch.allclose(a[k].float(), b[k].float()) for k in a)
    local_grid, _ = _run(tmp_path, "local")
    c = local_grid.contexts[100].state["model"].to_torch_state_dict()
    d = local_grid.contexts[102].state["model"].to_torch_state_dict()
    assert not all(torch.allclose(c[k].float(), d[k].float()) for k in c)


def test_a_failing_and_a_silent_node_are_excluded_and_the_round_goes_on(tmp_path):
    grid = InProcessGrid(client_app, {**TINY, "strategy": "local"}, 4)
    grid.contexts[103].node_config["partition-id"] = 99  # its ClientApp raises
    grid.silent.add(102)  # never answers
    _, recorder = _run(tmp_path, "local", grid=grid, **{"min-reply-fraction": 0.5})
    failed = {(f["node_id"], f["reason"].split(":")[0]) for f in recorder.failures}
    assert (103, "error code 2") in failed and (102, "no reply before the timeout") in failed
    evaluated = [c for c in recorder.as_dict()["rounds"][-1]["clients"] if "acc_global" in c]
    assert sorted(c["node_id"] for c in evaluated) == [100, 101]


def test_below_the_reply_quorum_the_run_fails_with_a_reason(tmp_path):
    grid = InProcessGrid(client_app, {**TINY, "strategy": "local"}, 4)
    grid.silent.update({101, 102, 103})
    with pytest.raises(QuorumError, match="only 1 of 4 nodes replied"):
        _run(tmp_path, "local", grid=grid)


def test_a_process_warms_each_distinct_client_up_once(monkeypatch):
    """Two federations of the same clients in one process (fedmmkt compare): the second starts from
    the first one's converged models instead of training them again; another seed trains anew."""
    import client_app.node as node_module

    calls = []
    original = node_module.fit_to_convergence
    monkeypatch.setattr(node_module, "_WARMED_UP", {})
    monkeypatch.setattr(node_module, "fit_to_convergence", lambda *a, **k: calls.append(1) or original(*a, **k))
    states = []
    for run_config in (TINY, {**TINY, "strategy": "fedavg"}, {**TINY, "seed": 3}):
        grid = InProcessGrid(client_app, run_config, 4)
        _message(grid, 100, P.QUERY_INFER, _synthetic())
        states.append(grid.contexts[100].state["model"].to_torch_state_dict())
    assert len(calls) == 2
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])
