"""One-off bootstrap of the toy world's server models: judge, VAE, T2I denoiser, captioner.

Pre-training takes minutes of CPU, so it runs once per configuration and its results live in
a cache folder, ``$XDG_CACHE_HOME/fedmmkt/<hash of the spec>`` (default ``~/.cache/fedmmkt``),
never beside the code. Each phase writes into a temporary folder and renames it into place
when done, so a finished phase is skipped on the next call and an interrupted one restarts.
The T2I model is trained on the deliberately imperfect PUBLIC split with a modest budget: it
should be useful but clearly imperfect (GenAcc roughly 30-60 %, ALGORITHM.md, "Two worlds").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL
from flwr.common.logger import log
from transformers import PreTrainedTokenizerBase

from fedmmkt_strategy.generative import captioner as cap
from fedmmkt_strategy.generative import judge as jdg
from fedmmkt_strategy.generative import quality, t2i
from worlds import domain, splits
from worlds.tokenizer import build_tokenizer

#: Bump when a recipe changes in a way the spec does not capture, to invalidate old caches.
RECIPE_VERSION = 2
PHASE_META = "fedmmkt_phase.json"
JUDGE, VAE, T2I, CAPTIONER, EVAL = "judge", "vae", "t2i", "captioner", "eval"


@dataclass(frozen=True)
class PretrainSpec:
    """Everything that decides the pre-trained models; its hash names the cache folder.

    `t2i_steps` is the knob that places the T2I model in the target quality band. Measured on
    the default domain (constant lr 1e-3, batch 64, judge-rated with DDIM 25 and guidance 3):
    GenAcc 25 % after 600 steps, 29 % after 900, 42 % after 1200, 52 % after 1500; one step
    takes about 0.5 s on 2 idle CPU cores. The other budgets keep the whole run near 15 min.
    """

    domain: splits.DomainSpec = splits.DomainSpec()
    seed: int = 0
    tokenizer_max_length: int = 24
    batch_size: int = 64
    judge_epochs: int = 60
    vae_steps: int = 400
    vae_lr: float = 1e-3
    t2i_steps: int = 2200
    t2i_lr: float = 1e-3
    captioner_steps: int = 3600
    captioner_lr: float = 5e-4
    eval_per_class: int = 10
    eval_steps: int = 25
    eval_guidance: float = 3.0

    def as_dict(self) -> dict[str, Any]:
        """The spec as JSON-able values. Domain fields the server's models never depend on (sensor
        readings) are left out, and so is an empty class hold-out, so adding those fields kept
        every existing cache key (and its minutes of pre-training) valid."""
        values = dataclasses.asdict(self)
        values["domain"].pop("sensor_missing_rate", None)
        if not values["domain"].get("public_holdout_classes"):
            values["domain"].pop("public_holdout_classes", None)
        else:
            values["domain"]["public_holdout_classes"] = list(values["domain"]["public_holdout_classes"])
        return {"recipe_version": RECIPE_VERSION, **values}

    def key(self) -> str:
        """A short, stable hash of the spec (and recipe version)."""
        text = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PretrainedModels:
    """Where the pre-trained models are; the folders load with `load_pipeline` / `load_captioner`."""

    root: Path
    t2i: Path
    captioner: Path
    judge: Path
    reference_features: Path
    report: Path

    def load_report(self) -> dict[str, Any]:
        return json.loads(self.report.read_text())


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/fedmmkt``, or ``~/.cache/fedmmkt``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fedmmkt"


def ensure_pretrained(
    spec: PretrainSpec = PretrainSpec(), cache_root: Path | None = None, progress: bool = True
) -> PretrainedModels:
    """Train whatever of the server models is missing from the cache, then return their paths.

    Phases, in order: judge (REFERENCE split), VAE, T2I denoiser and text encoder, captioner
    (all three on PUBLIC), evaluation of the T2I model. A phase whose folder exists is skipped.
    """
    root = (cache_root or default_cache_root()) / spec.key()
    root.mkdir(parents=True, exist_ok=True)
    _write_atomic(root / "spec.json", json.dumps(spec.as_dict(), indent=2, sort_keys=True))
    _remove_stale_tmp(root)
    tokenizer = build_tokenizer(spec.tokenizer_max_length)
    phases: dict[str, Callable[[Path], dict[str, Any]]] = {
        JUDGE: lambda out: _train_judge_phase(spec, out, progress),
        VAE: lambda out: _train_vae_phase(spec, root, tokenizer, out, progress),
        T2I: lambda out: _train_t2i_phase(spec, root, tokenizer, out, progress),
        CAPTIONER: lambda out: _train_captioner_phase(spec, tokenizer, out, progress),
        EVAL: lambda out: _eval_phase(spec, root, out, progress),
    }
    metas = {name: _run_phase(root, name, run, f"{i}/{len(phases)}") for i, (name, run) in enumerate(phases.items(), 1)}
    report = {
        "spec_key": spec.key(),
        "phases": metas,
        "total_seconds": sum(m["seconds"] for m in metas.values()),
    }
    _write_atomic(root / "report.json", json.dumps(report, indent=2))
    return PretrainedModels(
        root=root,
        t2i=root / T2I,
        captioner=root / CAPTIONER,
        judge=root / JUDGE / "judge.pt",
        reference_features=root / JUDGE / "reference_features.npy",
        report=root / "report.json",
    )


def _run_phase(root: Path, name: str, run: Callable[[Path], dict[str, Any]], place: str) -> dict[str, Any]:
    """Run one phase into a private temporary folder and rename it into place; skip if done.

    Its lines go through Flower's logger, like the bars' log lines of `fedmmkt_strategy.reporting.progress`:
    the first `flwr run` pre-trains inside the ServerApp, where only Flower's logger is shown."""
    final = root / name
    if final.is_dir():
        log(INFO, "phase %s %s: cached in %s, skipped", place, name, final)
        return json.loads((final / PHASE_META).read_text())
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    log(INFO, "phase %s %s: started", place, name)
    start = time.perf_counter()
    meta = {**run(tmp), "seconds": round(time.perf_counter() - start, 1)}
    (tmp / PHASE_META).write_text(json.dumps(meta, indent=2))
    try:
        os.replace(tmp, final)
    except OSError:  # another process finished the same phase first; keep its result
        shutil.rmtree(tmp, ignore_errors=True)
        return json.loads((final / PHASE_META).read_text())
    log(INFO, "phase %s %s: done in %.1f s: %s", place, name, meta["seconds"], _short(meta))
    return meta


def _train_judge_phase(spec: PretrainSpec, out: Path, progress: bool) -> dict[str, Any]:
    images, labels, _ = _split_arrays(splits.REFERENCE, spec.domain)
    judge = jdg.train_judge(
        images, labels, domain.NUM_CLASSES, epochs=spec.judge_epochs, seed=spec.seed + 1, progress=progress
    )
    jdg.save_judge(judge, out / "judge.pt")
    np.save(out / "reference_features.npy", jdg.judge_features(judge, images))
    test_images, test_labels, _ = _split_arrays(splits.IMAGE_TEST, spec.domain)
    return {"real_test_acc": quality.gen_acc(judge, test_images, test_labels)}


def _train_vae_phase(
    spec: PretrainSpec, root: Path, tokenizer: PreTrainedTokenizerBase, out: Path, progress: bool
) -> dict[str, Any]:
    images, _, _ = _split_arrays(splits.PUBLIC, spec.domain)
    vae = t2i.build_tiny_pipeline(tokenizer, spec.domain.image_size, spec.seed).vae
    mse = t2i.train_vae(
        vae,
        images,
        steps=spec.vae_steps,
        lr=spec.vae_lr,
        batch_size=spec.batch_size,
        seed=spec.seed + 2,
        progress=progress,
    )
    vae.save_pretrained(out)
    test_images, test_labels, _ = _split_arrays(splits.IMAGE_TEST, spec.domain)
    judge = jdg.load_judge(root / JUDGE / "judge.pt")
    return {
        "train_mse": mse,
        "scaling_factor": vae.config.scaling_factor,
        "reconstruction_judge_acc": quality.gen_acc(judge, _reconstruct(vae, test_images), test_labels),
    }


def _train_t2i_phase(
    spec: PretrainSpec, root: Path, tokenizer: PreTrainedTokenizerBase, out: Path, progress: bool
) -> dict[str, Any]:
    images, _, captions = _split_arrays(splits.PUBLIC, spec.domain)
    pipe = t2i.build_tiny_pipeline(tokenizer, spec.domain.image_size, spec.seed)
    pipe.vae = AutoencoderKL.from_pretrained(root / VAE).eval()
    loss = t2i.pretrain_denoiser(
        pipe,
        images,
        captions,
        steps=spec.t2i_steps,
        lr=spec.t2i_lr,
        batch_size=spec.batch_size,
        seed=spec.seed + 3,
        progress=progress,
    )
    pipe.save_pretrained(out)
    return {"train_loss": loss}


def _train_captioner_phase(
    spec: PretrainSpec, tokenizer: PreTrainedTokenizerBase, out: Path, progress: bool
) -> dict[str, Any]:
    images, _, captions = _split_arrays(splits.PUBLIC, spec.domain)
    model, processor = cap.build_tiny_captioner(tokenizer, spec.domain.image_size, spec.seed)
    loss = cap.train_captioner(
        model,
        processor,
        images,
        captions,
        steps=spec.captioner_steps,
        lr=spec.captioner_lr,
        batch_size=spec.batch_size,
        seed=spec.seed + 4,
        progress=progress,
    )
    cap.save_captioner(model, processor, out)
    test_images, test_labels, _ = _split_arrays(splits.IMAGE_TEST, spec.domain)
    accuracy = quality.caption_attribute_accuracy(cap.caption_images(model, processor, test_images), test_labels)
    return {"train_loss": loss, "real_test_caption_acc": accuracy}


def _eval_phase(spec: PretrainSpec, root: Path, out: Path, progress: bool) -> dict[str, Any]:
    metrics = quality.evaluate_t2i(
        t2i.load_pipeline(str(root / T2I)),
        jdg.load_judge(root / JUDGE / "judge.pt"),
        np.load(root / JUDGE / "reference_features.npy"),
        per_class=spec.eval_per_class,
        seed=spec.seed + 5,
        steps=spec.eval_steps,
        guidance=spec.eval_guidance,
        grid_path=out / "samples.png",
        progress=progress,
    )
    return {**metrics, "sampler": f"DDIM {spec.eval_steps}, guidance {spec.eval_guidance}"}


def _split_arrays(split: str, spec: splits.DomainSpec) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    data = splits.load_split(split, spec).with_format("numpy")[:]
    captions = [[str(c) for c in row] for row in data["captions"]]
    return data["image"].astype(np.uint8), data["label"].astype(np.int64), captions


def _reconstruct(vae: AutoencoderKL, images: np.ndarray) -> np.ndarray:
    """VAE round trip through the posterior mean: the ceiling of what the T2I model can draw."""
    with torch.no_grad():
        x = vae.decode(vae.encode(t2i.images_to_tensor(images)).latent_dist.mean).sample
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def _remove_stale_tmp(root: Path) -> None:
    """Delete temporary folders left by interrupted runs whose process is gone."""
    for tmp in root.glob(".*.tmp-*"):
        pid = int(tmp.name.rsplit("-", 1)[1])
        try:
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(tmp, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _short(meta: dict[str, Any]) -> str:
    scalars = {k: v for k, v in meta.items() if not isinstance(v, (list, dict))}
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in scalars.items())
