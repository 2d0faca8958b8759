"""Pre-training efficiency: where a step of each toy server model's training goes, and how close
the training loop comes to the model's own arithmetic (issue #12, item 2; target >= 0.8).

    python benchmarks/pretrain.py            # the default spec's models and batch, a few dozen steps each; ~3 min
    python benchmarks/pretrain.py --quick    # a handful of steps: a smoke check

For each phase of `fedmmkt pretrain` (judge, VAE, T2I denoiser + text encoder, captioner):
(a) Actual: the production training function itself (`train_judge`, `train_vae`,
`pretrain_denoiser`, `train_captioner`) for a few steps at the spec's batch size, instrumented
to split each step into forward, backward, gradient clipping, optimiser, EMA and the rest (data:
sampling, augmentation, noising, tokens), plus its one-off setup (e.g. encoding the latents).
(b) Raw: forward + backward of the same model on one fixed, ready batch of the same size,
repeated: no data, no optimiser, no EMA. The most a training loop could reach.

efficiency = raw seconds per step / actual seconds per step. The projected build time is the
actual seconds per step times the spec's steps. Run it on an idle machine: a second busy process
slows a 2-thread torch job many times over (README, "one heavy job at a time").
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from bench_common import write_result
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel

from fedmmkt_strategy.config import RunConfig, project_defaults
from fedmmkt_strategy.generative import captioner as cap
from fedmmkt_strategy.generative import judge as jdg
from fedmmkt_strategy.generative import pretrain, t2i
from fedmmkt_strategy.generative.server_models import pretrain_spec
from worlds import domain, splits
from worlds.tokenizer import build_tokenizer

#: Timed steps per phase (the judge counts epochs of len(REFERENCE) / batch steps).
STEPS = {"judge": 2, "vae": 30, "t2i": 30, "captioner": 60}
QUICK_STEPS = {"judge": 1, "vae": 3, "t2i": 3, "captioner": 3}
PARTS = ("forward", "backward", "clip", "optimiser", "ema")


@contextmanager
def instrumented(forwards: list[tuple[Any, str]]) -> Iterator[dict[str, float]]:
    """Accumulate seconds in the given module methods (forward), `Tensor.backward`, gradient
    clipping, every optimiser's `step` and `EMAModel.step` while the block runs."""
    seconds = dict.fromkeys(PARTS, 0.0)
    restore: list[Callable[[], None]] = []

    def wrap(owner: Any, name: str, part: str) -> None:
        original = getattr(owner, name)
        shadowing = isinstance(owner, torch.nn.Module)  # an instance attribute over the class's method

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[part] += time.perf_counter() - start

        setattr(owner, name, timed)
        restore.append(lambda: delattr(owner, name) if shadowing else setattr(owner, name, original))

    for owner, method in forwards:
        wrap(owner, method, "forward")
    wrap(torch.Tensor, "backward", "backward")
    wrap(torch.nn.utils, "clip_grad_norm_", "clip")
    wrap(torch.optim.AdamW, "step", "optimiser")  # every pre-training phase uses AdamW
    wrap(EMAModel, "step", "ema")
    try:
        yield seconds
    finally:
        for undo in reversed(restore):
            undo()


def timed_steps(run: Callable[[], Any], forwards: list[tuple[Any, str]], steps: int) -> dict[str, float]:
    """Run the production loop once, instrumented; seconds per step of each part."""
    with instrumented(forwards) as seconds:
        start = time.perf_counter()
        run()
        total = time.perf_counter() - start
    split = {part: s / steps for part, s in seconds.items()}
    split["data_and_rest"] = total / steps - sum(split.values())
    split["total"] = total / steps
    return split


def raw_seconds(step: Callable[[], torch.Tensor], params: list[torch.nn.Parameter], repeats: int) -> float:
    """Seconds per forward + backward of one fixed batch (after one untimed warm-up step)."""
    start = 0.0
    for i in range(repeats + 1):
        if i == 1:
            start = time.perf_counter()
        step().backward()
        for p in params:
            p.grad = None
    return (time.perf_counter() - start) / repeats


def bench_judge(spec: pretrain.PretrainSpec, epochs: int) -> dict[str, Any]:
    images, labels, _ = pretrain._split_arrays(splits.REFERENCE, spec.domain)
    steps = epochs * max(1, len(images) // spec.batch_size)
    probe = jdg.JudgeCNN(domain.NUM_CLASSES)
    forwards = [(jdg.JudgeCNN, "forward")]
    actual = timed_steps(
        lambda: jdg.train_judge(images, labels, domain.NUM_CLASSES, epochs=epochs, batch_size=spec.batch_size),
        forwards,
        steps,
    )
    x = jdg.to_judge_input(images[: spec.batch_size])
    y = torch.as_tensor(labels[: spec.batch_size])
    probe.train()
    raw = raw_seconds(lambda: F.cross_entropy(probe(x), y), list(probe.parameters()), min(steps, 20))
    return {"steps": steps, "spec_steps": spec.judge_epochs * (len(images) // spec.batch_size), **result(actual, raw)}


def bench_vae(spec: pretrain.PretrainSpec, steps: int) -> dict[str, Any]:
    images, _, _ = pretrain._split_arrays(splits.PUBLIC, spec.domain)
    vae = t2i.build_tiny_pipeline(build_tokenizer(spec.tokenizer_max_length), spec.domain.image_size).vae
    actual = timed_steps(
        lambda: t2i.train_vae(vae, images, steps=steps, batch_size=spec.batch_size),
        [(vae, "encode"), (vae, "decode")],
        steps,
    )
    vae.train()
    x = t2i.images_to_tensor(images[: spec.batch_size])

    def step() -> torch.Tensor:
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn_like(dist.mean)
        return F.mse_loss(vae.decode(z).sample, x) + 1e-6 * dist.kl().mean()

    raw = raw_seconds(step, list(vae.parameters()), min(steps, 20))
    return {"steps": steps, "spec_steps": spec.vae_steps, **result(actual, raw)}


def bench_t2i(spec: pretrain.PretrainSpec, steps: int) -> dict[str, Any]:
    images, _, captions = pretrain._split_arrays(splits.PUBLIC, spec.domain)
    tokenizer = build_tokenizer(spec.tokenizer_max_length)
    pipe = t2i.build_tiny_pipeline(tokenizer, spec.domain.image_size)
    setup_start = time.perf_counter()
    t2i.encode_latent_stats(pipe.vae, images)
    setup = time.perf_counter() - setup_start
    actual = timed_steps(
        lambda: t2i.pretrain_denoiser(pipe, images, captions, steps=steps, batch_size=spec.batch_size),
        [(pipe.unet, "forward"), (pipe.text_encoder, "forward")],
        steps,
    )
    actual["data_and_rest"] -= setup / steps  # the one-off latent encoding is reported apart
    actual["total"] -= setup / steps
    pipe.unet.train()
    pipe.text_encoder.train()
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    side = spec.domain.image_size // pipe.vae_scale_factor
    latents = torch.randn(spec.batch_size, pipe.unet.config.in_channels, side, side)
    ids = t2i._tokenize(tokenizer, [c[0] for c in captions[: spec.batch_size]])
    weights = torch.ones(spec.batch_size)
    generator = torch.Generator().manual_seed(0)
    params = list(pipe.unet.parameters()) + list(pipe.text_encoder.parameters())
    raw = raw_seconds(
        lambda: t2i._denoising_loss(pipe.unet, pipe.text_encoder, scheduler, latents, ids, weights, generator),
        params,
        min(steps, 20),
    )
    return {"steps": steps, "spec_steps": spec.t2i_steps, "setup_s": setup, **result(actual, raw)}


def bench_captioner(spec: pretrain.PretrainSpec, steps: int) -> dict[str, Any]:
    images, _, captions = pretrain._split_arrays(splits.PUBLIC, spec.domain)
    tokenizer = build_tokenizer(spec.tokenizer_max_length)
    model, processor = cap.build_tiny_captioner(tokenizer, spec.domain.image_size)
    actual = timed_steps(
        lambda: cap.train_captioner(model, processor, images, captions, steps=steps, batch_size=spec.batch_size),
        [(model, "forward")],
        steps,
    )
    model.train()
    tokens = tokenizer(
        [c[0] for c in captions[: spec.batch_size]],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    pixels = cap.pixel_values(processor, images[: spec.batch_size])
    labels = tokens.input_ids.masked_fill(tokens.attention_mask == 0, -100)
    raw = raw_seconds(
        lambda: (
            model(
                pixel_values=pixels, input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, labels=labels
            ).loss
        ),
        list(model.parameters()),
        min(steps, 20),
    )
    return {"steps": steps, "spec_steps": spec.captioner_steps, **result(actual, raw)}


def result(actual: dict[str, float], raw: float) -> dict[str, Any]:
    return {
        "actual_s_per_step": actual["total"],
        "steps_per_s": 1.0 / actual["total"],
        "split_s_per_step": actual,
        "raw_forward_backward_s_per_step": raw,
        "efficiency": raw / actual["total"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a handful of steps per phase (smoke check)")
    args = parser.parse_args(argv)
    spec = pretrain_spec(RunConfig.from_run_config(project_defaults()))
    if args.quick:  # small splits and batches: the same code paths in seconds
        domain_spec = dataclasses.replace(spec.domain, public_size=48, reference_per_class=2, test_per_class=1)
        spec = dataclasses.replace(spec, domain=domain_spec, batch_size=8)
    steps = QUICK_STEPS if args.quick else STEPS
    torch.manual_seed(0)
    phases = {
        "judge": bench_judge(spec, steps["judge"]),
        "vae": bench_vae(spec, steps["vae"]),
        "t2i": bench_t2i(spec, steps["t2i"]),
        "captioner": bench_captioner(spec, steps["captioner"]),
    }
    for phase in phases.values():
        phase["projected_build_s"] = phase["actual_s_per_step"] * phase["spec_steps"]
    out = {
        "spec_key": spec.key(),
        "batch_size": spec.batch_size,
        "phases": phases,
        "projected_build_s": sum(p["projected_build_s"] for p in phases.values()),
        "target_efficiency": 0.8,
    }
    report(out)
    write_result("pretrain", out, args.quick)
    return out


def report(out: dict[str, Any]) -> None:
    print(f"spec {out['spec_key']}, batch {out['batch_size']}, torch threads {torch.get_num_threads()}")
    header = f"{'phase':10s} {'s/step':>7s} {'steps/s':>8s} {'raw f+b':>8s} {'effic.':>7s}  split (ms/step)"
    print(header)
    for name, p in out["phases"].items():
        split = "  ".join(
            f"{k} {1000 * v:.1f}" for k, v in p["split_s_per_step"].items() if k != "total" and abs(v) > 1e-5
        )
        print(
            f"{name:10s} {p['actual_s_per_step']:7.3f} {p['steps_per_s']:8.2f} "
            f"{p['raw_forward_backward_s_per_step']:8.3f} {p['efficiency']:7.2f}  {split}"
        )
    mean = float(np.mean([p["efficiency"] for p in out["phases"].values()]))
    print(f"projected build (training steps only): {out['projected_build_s'] / 60:.1f} min; mean efficiency {mean:.2f}")


if __name__ == "__main__":
    main()
