"""Step 5's fine-tuner: one optimiser and weight average for the run, replay of public pairs, and
prompts in the format generation uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmmkt_strategy.generative.finetune import DenoiserFineTuner, FineTuneSettings, PairSet
from fedmmkt_strategy.generative.synthesis import SyntheticPool, finetune_prompts


def _pairs(pipe, public, n=16):
    images, _, captions = public
    return PairSet.encode(pipe, images[:n], [c[0] for c in captions[:n]])


def _unet_vector(pipe) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in pipe.unet.parameters()])


def test_optimiser_state_and_warmup_persist_across_rounds(pipe, public):
    tuner = DenoiserFineTuner(pipe, FineTuneSettings(lr=1e-3, batch_size=8, warmup_steps=10, replay_fraction=0.0))
    pairs = _pairs(pipe, public)
    tuner.run(pairs, steps=3, seed=0)
    first_state = float(tuner.optimizer.state[tuner.params[0]]["step"])
    tuner.run(pairs, steps=3, seed=1)
    assert tuner.steps_done == 6 and float(tuner.optimizer.state[tuner.params[0]]["step"]) == float(first_state) + 3
    assert tuner._lr() == pytest.approx(1e-3 * 7 / 10)  # still warming up: the warm-up is the run's


def test_the_pipeline_samples_with_the_average_and_the_optimiser_keeps_the_iterate(pipe, public):
    before = _unet_vector(pipe)
    tuner = DenoiserFineTuner(pipe, FineTuneSettings(lr=1e-2, batch_size=8, warmup_steps=0, ema_decay=0.9))
    tuner.run(_pairs(pipe, public), steps=4, seed=0)
    published = _unet_vector(pipe)
    raw = torch.cat([t.flatten() for t in tuner.raw])
    average = torch.cat([t.flatten() for t in tuner.average])
    assert torch.equal(published, average)
    # the average moved 1 - 0.9^4 = 34 % of the way along the iterates' path, the iterate all of it
    assert 0 < (published - before).norm() < (raw - before).norm()
    assert not pipe.unet.training


def test_replay_fills_its_share_of_every_batch(pipe, public):
    images, _, captions = public
    replay = PairSet.encode(pipe, images[16:48], [c[1] for c in captions[16:48]])
    drawn = []
    original = PairSet.draw

    def spy(self, count, generator):
        drawn.append((self is replay, count))
        return original(self, count, generator)

    settings = FineTuneSettings(lr=1e-4, batch_size=8, replay_fraction=0.25)
    PairSet.draw = spy
    try:
        DenoiserFineTuner(pipe, settings, replay).run(_pairs(pipe, public), steps=2, seed=0)
    finally:
        PairSet.draw = original
    assert drawn == [(False, 6), (True, 2)] * 2


def test_a_checkpointed_tuner_resumes_where_it_stopped(pipe, public, tokenizer):
    from fedmmkt_strategy.generative.t2i import build_tiny_pipeline

    settings = FineTuneSettings(lr=1e-3, batch_size=8, replay_fraction=0.0)
    tuner = DenoiserFineTuner(pipe, settings)
    pairs = _pairs(pipe, public)
    tuner.run(pairs, steps=2, seed=0)
    state = tuner.state_dict()
    other = build_tiny_pipeline(tokenizer, seed=0)
    resumed = DenoiserFineTuner(other, settings)
    resumed.load_state_dict(state)
    tuner.run(pairs, steps=2, seed=1)
    resumed.run(pairs, steps=2, seed=1)
    torch.testing.assert_close(_unet_vector(pipe), _unet_vector(other))


def test_finetune_prompts_keep_the_rendered_prompt_unless_the_vote_relabelled():
    pool = SyntheticPool(
        images=np.zeros((3, 2, 2, 3), np.uint8),
        captions=["c0", "c1", "c2"],
        prompts=["p0", "p1", "p2"],
        classes=np.array([0, 5, 9]),
        generation_round=np.ones(3, np.int64),
    )
    prompts = finetune_prompts(
        pool, np.array([2, 0, 1]), np.array([9, 0, 4]), seed=0, prompt_fn=lambda c, s: [f"new {int(x)}" for x in c]
    )
    assert prompts == ["p2", "p0", "new 4"]  # the rendered prompt or a fresh one of the vote; never a caption
