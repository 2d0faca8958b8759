"""The sensor modality: readings carry the class, the NaN mask survives encoding, the MLP fits the interface,
and a fedmmkt round runs with three modalities."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from client_app.app import app as client_app
from fedmmkt_strategy.config import ConfigError, RunConfig
from fedmmkt_strategy.reporting.results import RunRecorder, make_run_dir
from fedmmkt_strategy.runs.inprocess import InProcessGrid
from fedmmkt_strategy.steps.fusion import CrossModalFusion
from fedmmkt_strategy.strategies.factory import build_strategy
from task_models.registry import ModelSpec, build_task_model
from task_models.training import infer
from worlds import client_data, domain, sensor, splits
from worlds.modality import to_model_input

THREE_MODALITIES = "image:cnn-small,text:bow,sensor:mlp,sensor:mlp-small"


def test_readings_are_seeded_carry_the_class_and_miss_some_fields():
    labels = np.repeat(np.arange(domain.NUM_CLASSES), 40)
    a, b = sensor.readings(labels, seed=3), sensor.readings(labels, seed=3)
    assert a.shape == (len(labels), sensor.SENSOR_DIM) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    missing = np.isnan(a).mean()
    assert 0.1 < missing < 0.2  # missing-rate 0.15
    counts = np.array([domain.CLASSES[y].count for y in labels])
    measured = a[:, 3] * 8
    ok = ~np.isnan(measured)
    # the count sensor tells 3 from 8 petals almost always, but is noisy (imperfect, not exact)
    assert np.corrcoef(measured[ok], counts[ok])[0, 1] > 0.8
    assert np.abs(measured[ok] - counts[ok]).max() > 0.5


def test_synthetic_readings_measure_only_what_the_caption_names():
    captions = ["a red flower with five pointed petals", "a photo of a flower on grass"]
    out = sensor.from_captions(captions, seeds=[1, 2], missing_rate=0.0)
    np.testing.assert_array_equal(out, sensor.from_captions(captions, seeds=[1, 2], missing_rate=0.0))
    assert out[0, 0] > out[0, 2]  # red: more red than blue
    assert abs(out[0, 3] * 8 - 5) < 2
    assert np.isnan(out[1, :5]).all() and not np.isnan(out[1, 5:]).any()


def test_sensor_splits_and_client_partition():
    spec = splits.DomainSpec(pool_size=200, test_per_class=2)
    test = splits.load_split(splits.SENSOR_TEST, spec)
    assert len(test) == 2 * domain.NUM_CLASSES
    data = client_data.load_client_data(spec, "sensor", 0, 2, 0.5)
    assert data.train.inputs.shape[1] == sensor.SENSOR_DIM and data.train.inputs.dtype == np.float32
    assert len(data.global_test) == 2 * domain.NUM_CLASSES


def test_holdout_classes_leave_the_public_split_entirely():
    spec = splits.DomainSpec(public_size=600, public_holdout_classes=(0, 2))
    public = splits.load_split(splits.PUBLIC, spec)
    assert not np.isin(public["label"], [0, 2]).any() and not np.isin(public["caption_label"], [0, 2]).any()
    default = splits.load_split(splits.PUBLIC, splits.DomainSpec(public_size=600))
    assert np.isin(default["label"], [0, 2]).any()


@pytest.mark.parametrize("arch", ["mlp", "mlp-small"])
def test_mlp_is_a_task_model_and_sees_the_missing_mask(arch):
    x = to_model_input("sensor", sensor.readings(np.arange(6), seed=0, missing_rate=0.5))
    assert x.shape == (6, 2 * sensor.SENSOR_DIM) and torch.isfinite(x).all()
    assert x[:, sensor.SENSOR_DIM :].sum() > 0  # the mask half flags missing fields
    model = build_task_model(arch, ModelSpec(num_classes=24, fusion_dim=16), seed=0)
    out = infer(model, x)
    assert out.probs.shape == (6, 24) and out.embedding.shape == (6, 16)
    assert np.allclose(np.linalg.norm(out.embedding, axis=1), 1, atol=1e-4)


def test_config_keys_are_validated():
    assert RunConfig.from_run_config({"pretrain-holdout-classes": "3, 7"}).domain.public_holdout_classes == (3, 7)
    for bad in (
        {"pretrain-holdout-classes": "x"},
        {"pretrain-holdout-classes": "30"},
        {"fusion-other-modalities": "max"},
    ):
        with pytest.raises(ConfigError):
            RunConfig.from_run_config(bad)


def test_mean_fusion_sees_one_averaged_token():
    torch.manual_seed(0)
    tokens = {m: torch.randn(5, 8) for m in ("image", "text", "sensor")}
    attention = CrossModalFusion(list(tokens), 8, 3, heads=2, others="attention")
    mean = CrossModalFusion(list(tokens), 8, 3, heads=2, others="mean")
    mean.load_state_dict(attention.state_dict())
    assert not torch.allclose(attention(tokens)["image"], mean(tokens)["image"])
    two = {m: tokens[m] for m in ("image", "text")}
    a2, m2 = CrossModalFusion(list(two), 8, 3, heads=2), CrossModalFusion(list(two), 8, 3, heads=2, others="mean")
    m2.load_state_dict(a2.state_dict())
    assert torch.allclose(a2(two)["text"], m2(two)["text"])  # identical with two modalities


@pytest.mark.parametrize("others", ["attention", "mean"])
def test_fedmmkt_round_with_three_modalities(tmp_path, micro_run_config, others):
    rc = {
        **micro_run_config,
        "client-layout": THREE_MODALITIES,
        "num-server-rounds": 1,
        "labvote-beta": 1.0,
        "fusion-other-modalities": others,
        "results-dir": str(tmp_path),
    }
    config = RunConfig.from_run_config(rc)
    grid = InProcessGrid(client_app, rc, 4)
    recorder = RunRecorder(make_run_dir(config.results_path, "fedmmkt"), config.as_run_config(), "fedmmkt")
    strategy = build_strategy(config, recorder)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=1, timeout=60)
    recorder.write()
    metrics = json.loads((recorder.run_dir / "metrics.json").read_text())
    last = metrics["rounds"][-1]
    assert "sensor_alpha_entropy" in last["server"] and "fusion_nce" in last["server"]
    assert "sensor_acc_global_mean" in last["summary"]
    assert not metrics["failures"]
    assert set(strategy.fusion.modalities) == {"image", "text", "sensor"} and strategy.fusion.others == others
    sensor_nodes = [n for n, ctx in grid.contexts.items() if ctx.node_config["partition-id"] in (2, 3)]
    assert all("sensors" in grid.contexts[n].state["synthetic"] for n in sensor_nodes)


def test_a_modality_missing_from_a_round_does_not_end_the_run(tmp_path, micro_run_config):
    """Both sensor nodes fail round 1's query: the fusion is built for the layout's three
    modalities and fuses the two that answered; in round 2 the sensors are back."""
    from tests.faults import Fault, FaultInjector

    rc = {**micro_run_config, "client-layout": THREE_MODALITIES, "labvote-beta": 1.0, "results-dir": str(tmp_path)}
    config = RunConfig.from_run_config(rc)
    grid = InProcessGrid(client_app, rc, 4)
    sensors = [n for n, ctx in grid.contexts.items() if ctx.node_config["partition-id"] in (2, 3)]
    faults = FaultInjector(grid, {n: Fault("raise", "query.infer", server_round=1) for n in sensors})
    recorder = RunRecorder(make_run_dir(config.results_path, "fedmmkt"), config.as_run_config(), "fedmmkt")
    strategy = build_strategy(config, recorder)
    try:
        strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=2, timeout=60)
    finally:
        faults.release()
    recorder.write()
    metrics = json.loads((recorder.run_dir / "metrics.json").read_text())
    assert {(f["round"], f["phase"], f["node_id"]) for f in metrics["failures"]} == {
        (1, "query.infer", n) for n in sensors
    }
    assert strategy.fusion.modalities == ["image", "text", "sensor"]
    first, second = (r["server"] for r in metrics["rounds"][1:3])
    assert "fusion_nce" in first and "sensor_alpha_entropy" not in first
    assert "sensor_alpha_entropy" in second and "fusion_nce" in second
