"""Seeded work of earlier runs read back (`fedmmkt_strategy.memo`): computed once, bit-identical
after, keyed by everything it depends on, and never stored for a fine-tuned T2I model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from client_app.app import app as client_app
from fedmmkt_strategy import memo
from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.generative.pretrain import ensure_pretrained
from fedmmkt_strategy.generative.reuse import PretrainedGenerations
from fedmmkt_strategy.generative.server_models import load_server_models, pretrain_spec
from fedmmkt_strategy.runs.inprocess import InProcessGrid
from fedmmkt_strategy.runs.runner import run_federation
from tests.test_checkpoint import comparable


def test_remembered_computes_once_and_reads_back(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(3), "words": np.array(["a", "bc"])}

    first, hit = memo.remembered(tmp_path, "kind", {"seed": 1}, compute)
    again, hit_again = memo.remembered(tmp_path, "kind", {"seed": 1}, compute)
    assert (hit, hit_again, len(calls)) == (False, True, 1)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    memo.remembered(tmp_path, "kind", {"seed": 2}, compute)  # another key: computed
    memo.remembered(None, "kind", {"seed": 1}, compute)  # off: computed, nothing stored
    assert len(calls) == 3 and len(list((tmp_path / "kind").glob("*.npz"))) == 2
    [stored] = [p for p in (tmp_path / "kind").glob("*.npz") if p.stem == memo.digest({"seed": 1})]
    stored.write_bytes(b"not an npz")  # unreadable: computed again and replaced
    assert memo.remembered(tmp_path, "kind", {"seed": 1}, compute)[1] is False and len(calls) == 4
    assert json.loads(stored.with_suffix(".json").read_text()) == {"seed": 1}


def test_code_and_weights_are_part_of_the_key(tmp_path):
    layer = torch.nn.Linear(2, 2)
    before = memo.weights_digest(layer)
    with torch.no_grad():
        layer.weight[0, 0] += 1e-6
    assert memo.weights_digest(layer) != before
    assert memo.code_digest(memo) == memo.code_digest(memo) != memo.code_digest(json)


def test_the_untouched_t2i_model_is_rendered_once_per_cache(tmp_path, micro_run_config):
    models = load_server_models(RunConfig.from_run_config(micro_run_config))
    prompts = ["a red flower with three round petals", "a blue flower with five pointed petals"]
    sampler = dict(steps=2, guidance=3.0, batch_size=2)
    first = PretrainedGenerations(models.pipe, models.captioner, models.processor, str(tmp_path))
    images, captions = first.captioned(prompts, 5, **sampler)
    second = PretrainedGenerations(models.pipe, models.captioner, models.processor, str(tmp_path))
    again, captions_again = second.captioned(prompts, 5, **sampler)
    assert second.hits == 1 and np.array_equal(images, again) and captions == captions_again
    second.images(prompts, 6, **sampler)  # another seed: rendered
    assert second.hits == 1
    stored = sorted((tmp_path / "memo").rglob("*.npz"))
    with torch.no_grad():  # a fine-tuned model: rendered, and never stored
        models.pipe.unet.conv_in.bias += 0.1
    try:
        changed = second.images(prompts, 5, **sampler)
        assert sorted((tmp_path / "memo").rglob("*.npz")) == stored
        assert not np.array_equal(changed, images)
    finally:
        with torch.no_grad():
            models.pipe.unet.conv_in.bias -= 0.1


def test_a_second_run_reuses_the_first_ones_work_and_reports_the_same(tmp_path, micro_run_config, caplog, monkeypatch):
    """Round-0 score, round-1 pool and warm-ups come from the memo; every figure is unchanged."""
    import client_app.node as node_module

    monkeypatch.setattr(node_module, "_WARMED_UP", {})  # other tests of this process warmed these clients up

    cache = tmp_path / "cache"  # the micro server models, and a memo of this test's own
    spec = pretrain_spec(RunConfig.from_run_config(micro_run_config))
    shutil.copytree(ensure_pretrained(spec, Path(micro_run_config["cache-dir"])).root, cache / spec.key())
    rc = {**micro_run_config, "results-dir": str(tmp_path), "reuse-cache": True, "cache-dir": str(cache)}
    first = run_federation(InProcessGrid(client_app, rc, 4), {**rc, "run-name": "first"})
    node_module._WARMED_UP.clear()  # a new process would not have them either
    with caplog.at_level("INFO"):
        second = run_federation(InProcessGrid(client_app, rc, 4), {**rc, "run-name": "second"})
    assert caplog.text.count("[the same warm-up of an earlier run, from the cache]") == 4
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (first, second)]
    assert comparable(metrics[0]) == comparable(metrics[1])
    kinds = {p.name for p in (cache / "memo").iterdir()}
    assert kinds == {"client-warmup", "generations", "captioned"}
