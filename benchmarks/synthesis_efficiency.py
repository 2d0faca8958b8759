"""Synthesis efficiency: generated images per second against the raw batched denoiser throughput,
measured in the same process on the same models (issue 7, item 2; target >= 0.9).

    python benchmarks/synthesis_efficiency.py            # 192 images (the default is now 384), batch 64, DDIM 25, CFG 3
    python benchmarks/synthesis_efficiency.py --quick    # 16 images, batch 8, DDIM 3: a smoke check

(a) Raw: the UNet alone, on a batch of latents at ``generation-batch-size`` doubled for
classifier-free guidance (as the pipeline does), ``sampling-steps`` forward passes per batch,
with precomputed text embeddings: the most a sampler could reach if the denoiser were all it ran.
(b) Actual: `generate_images` (the strategy's synthesis path: StableDiffusionPipeline with DDIM,
guidance, VAE decode), instrumented to split its time into UNet, text encoding, scheduler, VAE
decode and the rest; captioning (`caption_images`) is timed separately, since issue 7 counts
"generated images per second" against the denoiser and captioning is a second model.

efficiency = actual generation images/s / raw UNet-limited images/s. Raw and actual passes
alternate over ``--repeats`` and medians are reported, so a noisy shared machine hurts both alike.
Models: the cached toy server models of the default run config (`load_server_models`), or what
``--run-config`` names.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from bench_common import parse_overrides, project_defaults, write_result

from fedmmkt_strategy.config import RunConfig, load_preset
from fedmmkt_strategy.generative.captioner import caption_images
from fedmmkt_strategy.generative.server_models import ServerModels, load_server_models
from fedmmkt_strategy.generative.synthesis import class_balanced_prompts, world_prompts
from fedmmkt_strategy.generative.t2i import default_size, generate_images
from fedmmkt_strategy.reporting.progress import track

#: Sizes of ``--quick``: enough to exercise every code path in a few seconds.
QUICK = load_preset("bench-synthesis")["quick"]  # presets/bench-synthesis.toml
PHASES = ("unet", "text_encoding", "scheduler", "vae_decode")


def _sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so wall-clock timings mean the work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def instrumented(pipe: Any) -> Iterator[dict[str, float]]:
    """Accumulate the seconds spent in the pipeline's UNet, text encoder, scheduler step and VAE
    decode while the block runs, by wrapping those callables on the instances (removed after)."""
    seconds = dict.fromkeys(PHASES, 0.0)
    device = pipe.unet.device
    targets: list[tuple[Any, str, str]] = [
        (pipe.unet, "forward", "unet"),
        (pipe.text_encoder, "forward", "text_encoding"),
        (pipe.scheduler, "step", "scheduler"),
        (pipe.vae, "decode", "vae_decode"),
    ]

    def wrap(fn: Callable[..., Any], phase: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            _sync(device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            _sync(device)
            seconds[phase] += time.perf_counter() - start
            return out

        return timed

    for obj, attr, phase in targets:
        setattr(obj, attr, wrap(getattr(obj, attr), phase))
    try:
        yield seconds
    finally:
        for obj, attr, _ in targets:
            delattr(obj, attr)  # the class method shows through again


@torch.no_grad()
def raw_unet_seconds(pipe: Any, prompts: list[str], steps: int, guidance: float, batch_size: int, seed: int) -> float:
    """Seconds for the UNet forward passes alone that generating `prompts` needs: per batch,
    `steps` passes on ``2 x batch`` latents with CFG (``batch`` without), embeddings precomputed."""
    device, dtype = pipe.unet.device, pipe.unet.dtype
    cfg = guidance > 1.0
    size = default_size(pipe) // pipe.vae_scale_factor
    pipe.scheduler.set_timesteps(steps, device=device)
    timesteps = pipe.scheduler.timesteps.clone()
    generator = torch.Generator("cpu").manual_seed(seed)
    batches = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        positive, negative = pipe.encode_prompt(chunk, device, 1, cfg, negative_prompt=None)
        embeds = torch.cat([negative, positive]) if cfg else positive
        latents = torch.randn((len(chunk), pipe.unet.config.in_channels, size, size), generator=generator)
        batches.append((latents.to(device, dtype), embeds))
    _sync(device)
    start = time.perf_counter()
    for latents, embeds in batches:
        for t in timesteps:
            model_input = torch.cat([latents] * 2) if cfg else latents
            pipe.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)
    _sync(device)
    return time.perf_counter() - start


def measure(models: ServerModels, config: RunConfig, repeats: int) -> dict[str, Any]:
    """Alternate raw and actual passes `repeats` times; medians and the time split of the actual one."""
    pipe = models.pipe
    n, batch, steps, guidance = (
        config.synthetic_size,
        config.generation_batch_size,
        config.sampling_steps,
        config.guidance_scale,
    )
    world = config.world()
    seed = config.seed * 100003  # the strategy's round-1 seed
    prompts, _ = class_balanced_prompts(n, seed, world.num_classes, world_prompts(world))
    # warm-up (allocator, lazy init), untimed
    generate_images(pipe, prompts[:2], seed=seed, num_inference_steps=1, guidance_scale=guidance, batch_size=2)
    raw, actual, captioning, splits = [], [], [], []
    for _ in track(range(repeats), "synthesis_efficiency", "repeat", every=0):  # updates fall between timings
        raw.append(raw_unet_seconds(pipe, prompts, steps, guidance, batch, seed))
        with instrumented(pipe) as seconds:
            start = time.perf_counter()
            images = generate_images(
                pipe, prompts, seed=seed, num_inference_steps=steps, guidance_scale=guidance, batch_size=batch
            )
            total = time.perf_counter() - start
        actual.append(total)
        splits.append({**seconds, "other": total - sum(seconds.values()), "total": total})
        start = time.perf_counter()
        caption_images(models.captioner, models.processor, images)
        captioning.append(time.perf_counter() - start)
    raw_s, gen_s, cap_s = statistics.median(raw), statistics.median(actual), statistics.median(captioning)
    split = splits[actual.index(sorted(actual)[len(actual) // 2])]  # the split of the median-time pass
    raw_ips, gen_ips = n / raw_s, n / gen_s
    return {
        "config": {
            "images": n,
            "generation_batch_size": batch,
            "sampling_steps": steps,
            "guidance_scale": guidance,
            "cfg_doubling": guidance > 1.0,
            "image_size": default_size(pipe),
            "unet_forward_passes": math.ceil(n / batch) * steps,
            "device": str(pipe.unet.device),
            "dtype": str(pipe.unet.dtype),
            "repeats": repeats,
        },
        "raw_unet_s": raw_s,
        "raw_unet_images_per_s": raw_ips,
        "generation_s": gen_s,
        "generation_images_per_s": gen_ips,
        "efficiency": gen_ips / raw_ips,
        "target": 0.9,
        "target_met": gen_ips / raw_ips >= 0.9,
        "captioning_s": cap_s,
        "captioning_images_per_s": n / cap_s,
        "synthesis_images_per_s": n / (gen_s + cap_s),
        "synthesis_efficiency_incl_captioning": (n / (gen_s + cap_s)) / raw_ips,
        "generation_split_s": split,
        "generation_split_share": {k: v / split["total"] for k, v in split.items() if k != "total"},
        "unet_in_pipeline_vs_raw": split["unet"] / raw_s,
        "per_repeat": {"raw_unet_s": raw, "generation_s": actual, "captioning_s": captioning},
    }


def report(result: dict[str, Any]) -> None:
    """The figures, human-readable."""
    c = result["config"]
    print(
        f"{c['images']} images, batch {c['generation_batch_size']}, DDIM {c['sampling_steps']}, "
        f"guidance {c['guidance_scale']} (CFG doubling {c['cfg_doubling']}), {c['image_size']} px, "
        f"{c['device']} {c['dtype']}, median of {c['repeats']}"
    )
    print(f"raw UNet forward:   {result['raw_unet_s']:7.2f} s  {result['raw_unet_images_per_s']:8.2f} images/s")
    print(f"actual generation:  {result['generation_s']:7.2f} s  {result['generation_images_per_s']:8.2f} images/s")
    met = "met" if result["target_met"] else "NOT met"
    print(f"efficiency:         {result['efficiency']:.3f} (target >= 0.9: {met})")
    print(f"captioning:         {result['captioning_s']:7.2f} s  {result['captioning_images_per_s']:8.2f} images/s")
    print(
        f"synthesis (generation + captioning): {result['synthesis_images_per_s']:.2f} images/s, "
        f"{result['synthesis_efficiency_incl_captioning']:.3f} of raw"
    )
    print("where the generation time goes:")
    for phase, seconds in result["generation_split_s"].items():
        share = 1.0 if phase == "total" else result["generation_split_share"][phase]
        print(f"  {phase:14s} {seconds:7.3f} s  {100 * share:5.1f} %")
    print(f"UNet inside the pipeline / raw UNet: {result['unet_in_pipeline_vs_raw']:.3f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes {QUICK} and one repeat (smoke check)")
    parser.add_argument("--repeats", type=int, default=None, help="alternating raw/actual passes (default 3; quick 1)")
    parser.add_argument("--run-config", default="", help="run-config overrides, 'key=value ...' (e.g. cache-dir)")
    args = parser.parse_args(argv)
    overrides = {**(QUICK if args.quick else {}), **parse_overrides(args.run_config)}
    config = RunConfig.from_run_config({**project_defaults(), **overrides})
    models = load_server_models(config)
    result = measure(models, config, args.repeats or (1 if args.quick else 3))
    result["run_config_overrides"] = overrides
    report(result)
    write_result("synthesis_efficiency", result, args.quick)
    return result


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
