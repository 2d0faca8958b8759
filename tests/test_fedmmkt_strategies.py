"""FedMMKT and its sibling baselines, end to end in-process on micro server models."""

import json

import pytest
import torch
from flwr.app import ArrayRecord

from client_app.app import app as client_app
from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.generative.server_models import load_server_models, public_replay
from fedmmkt_strategy.memo import weights_digest
from fedmmkt_strategy.reporting.results import RunRecorder, make_run_dir
from fedmmkt_strategy.runs.inprocess import InProcessGrid
from fedmmkt_strategy.strategies.factory import build_strategy


@pytest.fixture(scope="module")
def models(micro_run_config):
    return load_server_models(RunConfig.from_run_config(micro_run_config))


def _run(tmp_path, micro_run_config, models, strategy, grid=None, **overrides):
    rc = {**micro_run_config, "strategy": strategy, "results-dir": str(tmp_path), **overrides}
    config = RunConfig.from_run_config(rc)
    grid = grid or InProcessGrid(client_app, rc, 4)
    recorder = RunRecorder(make_run_dir(config.results_path, strategy), config.as_run_config(), strategy)
    build_strategy(config, recorder, models).start(
        grid=grid, initial_arrays=ArrayRecord(), num_rounds=config.num_server_rounds, timeout=60
    )
    recorder.write()
    return grid, json.loads((recorder.run_dir / "metrics.json").read_text()), recorder.run_dir


def test_runs_of_one_process_share_the_encoded_public_replay_of_equal_weights(micro_run_config):
    config = RunConfig.from_run_config(micro_run_config)
    first, second = load_server_models(config).pipe, load_server_models(config).pipe
    assert public_replay(first, config) is public_replay(second, config)  # loaded twice, encoded once
    with torch.no_grad():
        next(second.vae.parameters()).add_(1e-3)
    assert weights_digest(second.vae) != weights_digest(first.vae)  # other weights: a new encoding


def test_fedmmkt_round_reports_every_diagnostic(tmp_path, micro_run_config, models):
    grid, metrics, run_dir = _run(tmp_path, micro_run_config, models, "fedmmkt", **{"labvote-beta": 1.0})
    server = metrics["rounds"][-1]["server"]
    for key in (
        "discard_rate",
        "vote_prompt_agreement",
        "image_alpha_entropy",
        "text_alpha_max",
        "fusion_ce",
        "fusion_nce",
        "t2i_finetune_loss",
        "gen_acc",
        "fid",
        "time_synthesis_s",
        "time_query_s",
        "time_labvote_s",
        "time_fusion_s",
        "time_t2i_update_s",
    ):
        assert key in server, key
    assert metrics["rounds"][0]["round"] == 0 and "gen_acc" in metrics["rounds"][0]["server"]
    client = metrics["rounds"][-1]["clients"][0]
    for key in ("counted_vote_share", "alpha_mean", "acc_global", "bytes_up", "bytes_down"):
        assert key in client, key
    assert (run_dir / "samples" / "round_002.png").exists()
    # clients distilled: the train replies carried KL and representation losses
    assert all("synthetic" in ctx.state for ctx in grid.contexts.values())


def test_images_are_sent_once_then_only_regenerated_rows(tmp_path, micro_run_config, models):
    grid, metrics, _ = _run(tmp_path, micro_run_config, models, "fedmmkt", **{"refresh-fraction": 0.25})
    from fedmmkt_strategy import protocol as P

    queries = [m for m in grid.sent if m.metadata.message_type == P.QUERY_INFER]
    rows = [len(m.content[P.SYNTHETIC][P.ROWS].numpy()) for m in queries]
    assert rows[:4] == [48] * 4 and rows[4:] == [12] * 4
    image_node = queries[4].content[P.SYNTHETIC]
    assert (P.IMAGES in image_node) != (P.CAPTIONS in image_node)  # only its own modality after round 1


def test_a_node_that_lost_its_pool_gets_it_again(tmp_path, micro_run_config, models):
    rc = {**micro_run_config, "strategy": "fedmmkt", "num-server-rounds": 3}
    grid = InProcessGrid(client_app, rc, 4)
    original = grid.client_app

    def forgetful(msg, ctx):  # node 101 restarts before round 2: its state is gone
        if msg.metadata.group_id == "2" and ctx.node_id == 101 and "synthetic" in ctx.state:
            del ctx.state["synthetic"]
        return original(msg, ctx)

    grid.client_app = forgetful
    _, metrics, _ = _run(tmp_path, micro_run_config, models, "fedmmkt", grid=grid, **{"num-server-rounds": 3})
    failed = [f for f in metrics["failures"] if f["node_id"] == 101]
    assert failed and all(f["round"] == 2 for f in failed)
    assert any(c["node_id"] == 101 and "acc_global" in c for c in metrics["rounds"][-1]["clients"])


@pytest.mark.parametrize("strategy", ["fedmd", "creamfl", "self-ft"])
def test_baselines_run_and_switch_the_right_steps_off(tmp_path, micro_run_config, models, strategy):
    grid, metrics, _ = _run(tmp_path, micro_run_config, models, strategy)
    server = metrics["rounds"][-1]["server"]
    assert ("t2i_finetune_loss" in server) == (strategy == "self-ft")
    assert "fusion_ce" not in server
    if strategy == "fedmd":
        assert server["discard_rate"] == 0.0
    if strategy == "creamfl":
        assert "image_alpha_entropy" in server


@pytest.mark.parametrize(
    "switch", ["use-labvote", "use-contrastive-aggregation", "use-cross-attention", "use-t2i-update"]
)
def test_ablation_switches(tmp_path, micro_run_config, models, switch):
    # beta = 1 counts every vote: the micro models are too uncertain for beta = 0.5
    overrides = {switch: False, "num-server-rounds": 1, "labvote-beta": 1.0}
    _, metrics, _ = _run(tmp_path, micro_run_config, models, "fedmmkt", **overrides)
    server = metrics["rounds"][-1]["server"]
    expected_missing = {"use-cross-attention": "fusion_ce", "use-t2i-update": "t2i_finetune_loss"}
    if switch in expected_missing:
        assert expected_missing[switch] not in server
    if switch == "use-contrastive-aggregation":
        assert server["image_alpha_entropy"] == pytest.approx(1.0)
    if switch == "use-labvote":
        assert server["discard_rate"] == 0.0
    assert ("gen_acc" in server) == (switch != "use-t2i-update")  # an unchanged T2I model is not re-scored


def test_float16_uplink_halves_the_query_reply_and_the_round_completes(tmp_path, micro_run_config, models):
    """uplink-dtype = float16: clients send half the inference bytes, the server accepts them,
    votes and fuses in float32; every other message keeps its size."""
    from fedmmkt_strategy import protocol as P

    overrides = {"num-server-rounds": 1, "labvote-beta": 1.0, "t2i-steps-per-round": 0}
    runs = {}
    for dtype in ("float32", "float16"):
        grid, metrics, _ = _run(
            tmp_path / dtype, micro_run_config, models, "fedmmkt", **overrides, **{"uplink-dtype": dtype}
        )
        assert not metrics["failures"], metrics["failures"]
        runs[dtype] = (grid, metrics["rounds"][-1])
    up = {dtype: {c["node_id"]: c["bytes_up"] for c in last["clients"]} for dtype, (_, last) in runs.items()}
    n, c, d = 48, 24, 128  # synthetic-size of MICRO_SERVER, toy classes, fusion-dim
    assert all(up["float32"][node] - up["float16"][node] == n * (c + 1 + d) * 2 for node in up["float32"])
    grid16, last16 = runs["float16"]
    assert "fusion_ce" in last16["server"] and last16["server"]["kept"] > 0  # vote and fusion ran on float16
    assert all("acc_global" in client for client in last16["clients"])  # distilled and evaluated
    queries = [m for m in grid16.sent if m.metadata.message_type == P.QUERY_INFER]
    assert len(queries) == 4 and all("synthetic" in ctx.state for ctx in grid16.contexts.values())


def test_class_aware_votes_ask_each_node_for_its_label_counts_once(tmp_path, micro_run_config, models):
    from fedmmkt_strategy import protocol as P

    grid, metrics, _ = _run(
        tmp_path, micro_run_config, models, "fedmmkt", **{"labvote-class-weights": "label-counts", "labvote-beta": 1.0}
    )
    queries = [m for m in grid.sent if m.metadata.message_type == P.QUERY_INFER]
    asked = [bool(m.content[P.CONFIG][P.SEND_LABEL_COUNTS]) for m in queries]
    assert asked == [True] * 4 + [False] * 4
    server = metrics["rounds"][1]["server"]
    for key in ("confused_vote_depicted_agreement", "clean_prompt_depicted_agreement_kept", "confused_discard_rate"):
        assert key in server, key
    assert "gen_acc_confused" in metrics["rounds"][0]["server"]
