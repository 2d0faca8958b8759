from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from fedmmkt_strategy.cli import pretrain as pretrain_cli
from fedmmkt_strategy.generative import pretrain
from fedmmkt_strategy.generative.captioner import caption_images, load_captioner
from fedmmkt_strategy.generative.judge import load_judge
from fedmmkt_strategy.generative.t2i import generate_images, load_pipeline
from worlds.splits import DomainSpec

MICRO = pretrain.PretrainSpec(
    domain=DomainSpec(public_size=48, reference_per_class=2, test_per_class=1),
    judge_epochs=1,
    vae_steps=2,
    t2i_steps=2,
    captioner_steps=2,
    batch_size=8,
    eval_per_class=1,
    eval_steps=2,
)
PHASES = (pretrain.JUDGE, pretrain.VAE, pretrain.T2I, pretrain.CAPTIONER, pretrain.EVAL)


def _stamps(root: Path) -> dict[str, int]:
    return {name: (root / name / pretrain.PHASE_META).stat().st_mtime_ns for name in PHASES}


def test_phases_are_cached_and_skipped_on_the_second_call(tmp_path, caplog):
    models = pretrain.ensure_pretrained(MICRO, tmp_path, progress=False)
    assert models.root == tmp_path / MICRO.key()
    first = _stamps(models.root)
    report = models.load_report()
    assert set(report["phases"]) == set(PHASES)
    assert 0.0 <= report["phases"][pretrain.EVAL]["gen_acc"] <= 1.0

    with caplog.at_level(logging.INFO, logger=pretrain.__name__):
        again = pretrain.ensure_pretrained(MICRO, tmp_path, progress=False)
    assert again == models and _stamps(models.root) == first
    assert sum("skipped" in r.getMessage() for r in caplog.records) == len(PHASES)

    pipe = load_pipeline(str(models.t2i))
    images = generate_images(pipe, ["a red flower with three round petals"], seed=0, num_inference_steps=2)
    model, processor = load_captioner(str(models.captioner))
    assert len(caption_images(model, processor, images)) == 1
    assert load_judge(models.judge).num_classes == 24
    assert np.load(models.reference_features).shape[0] == 48


def test_an_interrupted_phase_restarts_and_finished_ones_are_kept(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pretrain.t2i, "pretrain_denoiser", crash)
        with pytest.raises(KeyboardInterrupt):
            pretrain.ensure_pretrained(MICRO, tmp_path, progress=False)
    root = tmp_path / MICRO.key()
    assert (root / pretrain.JUDGE).is_dir() and (root / pretrain.VAE).is_dir()
    assert not (root / pretrain.T2I).exists()
    assert list(root.glob(".t2i.tmp-*"))  # the half-written phase stays out of place
    kept = {name: (root / name / pretrain.PHASE_META).stat().st_mtime_ns for name in (pretrain.JUDGE, pretrain.VAE)}

    models = pretrain.ensure_pretrained(MICRO, tmp_path, progress=False)
    assert _stamps(models.root)[pretrain.JUDGE] == kept[pretrain.JUDGE]
    assert _stamps(models.root)[pretrain.VAE] == kept[pretrain.VAE]
    assert (root / pretrain.T2I / "model_index.json").exists()
    assert not list(root.glob(".*.tmp-*"))


def test_cache_location_follows_xdg_and_the_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert pretrain.default_cache_root() == tmp_path / "fedmmkt"
    assert pretrain.PretrainSpec().key() == pretrain.PretrainSpec().key()
    assert pretrain.PretrainSpec(t2i_steps=1).key() != pretrain.PretrainSpec().key()


def test_command_line_flags_set_the_budgets():
    spec, args = pretrain_cli.parse_args(["--t2i-steps", "7", "--vae-steps", "3", "--force", "--cache-dir", "/x"])
    assert (spec.t2i_steps, spec.vae_steps) == (7, 3)
    assert spec.captioner_steps == pretrain.PretrainSpec().captioner_steps
    assert args.force and args.cache_dir == Path("/x")


def test_the_pretrain_command_builds_the_spec_a_run_config_asks_for(monkeypatch):
    """`fedmmkt pretrain --run-config 'pretrain-seed=1 ...'` builds another world's server models."""
    from fedmmkt_strategy.cli.main import main as fedmmkt
    from fedmmkt_strategy.config import RunConfig
    from fedmmkt_strategy.generative.server_models import pretrain_spec

    built = []
    monkeypatch.setattr(pretrain_cli, "ensure_pretrained", lambda spec, *a, **k: built.append(spec) or 1 / 0)
    overrides = "pretrain-seed=1 caption-partial-rate=0.5"
    with pytest.raises(ZeroDivisionError):
        fedmmkt(["pretrain", "--run-config", overrides, "--t2i-steps", "7"])
    expected = pretrain_spec(RunConfig.from_run_config({"pretrain-seed": 1, "caption-partial-rate": 0.5}))
    assert built[0].domain == expected.domain and built[0].seed == 1 and built[0].t2i_steps == 7
