"""One-off bootstrap of the toy world's server models: judge, VAE, T2I denoiser, captioner.

Pre-training takes minutes of CPU, so it runs once per configuration and its results live in
a cache folder, ``$XDG_CACHE_HOME/fedmmkt/<hash of the spec>`` (default ``~/.cache/fedmmkt``),
never beside the code. Each phase writes into a temporary folder and renames it into place
when done, so a finished phase is skipped on the next call and an interrupted one restarts.
A fresh cache of the default spec is filled in seconds from the models this repository ships
(`fedmmkt_strategy.generative.prebuilt`), which ``fedmmkt pretrain --force --export-prebuilt``
built with this same code. The T2I model is trained on the deliberately imperfect PUBLIC split with a modest budget: it
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
from diffusers import AutoencoderKL, StableDiffusionPipeline
from flwr.common.logger import log
from transformers import PreTrainedTokenizerBase

from fedmmkt_strategy.generative import captioner as cap
from fedmmkt_strategy.generative import judge as jdg
from fedmmkt_strategy.generative import prebuilt, quality, t2i
from fedmmkt_strategy.generative.loading import no_loading_bars
from fedmmkt_strategy.memo import default_cache_root
from worlds import domain, splits
from worlds.tokenizer import build_tokenizer

#: Bump when a recipe changes in a way the spec does not capture, to invalidate old caches.
RECIPE_VERSION = 2
PHASE_META = "fedmmkt_phase.json"
JUDGE, VAE, T2I, CAPTIONER, EVAL = "judge", "vae", "t2i", "captioner", "eval"
PHASES = (JUDGE, VAE, T2I, CAPTIONER, EVAL)
#: The command that builds the shipped bundle; recorded in its manifest.
EXPORT_COMMAND = "fedmmkt pretrain --force --export-prebuilt"


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


def ensure_pretrained(
    spec: PretrainSpec = PretrainSpec(),
    cache_root: Path | None = None,
    progress: bool = True,
    use_prebuilt: bool = True,
) -> PretrainedModels:
    """Train whatever of the server models is missing from the cache, then return their paths.

    Phases, in order: judge (REFERENCE split), VAE, T2I denoiser and text encoder, captioner
    (all three on PUBLIC), evaluation of the T2I model. A phase whose folder exists is skipped.
    When no phase is cached yet and the project ships a bundle built for exactly this spec
    (`prebuilt.find_bundle`), every phase is installed from it instead of trained (seconds);
    ``use_prebuilt=False`` always trains.
    """
    root = (cache_root or default_cache_root()) / spec.key()
    root.mkdir(parents=True, exist_ok=True)
    _write_atomic(root / "spec.json", json.dumps(spec.as_dict(), indent=2, sort_keys=True))
    _remove_stale_tmp(root)
    done = [json.loads((root / name / PHASE_META).read_text()) for name in PHASES if (root / name).is_dir()]
    installable = all("source" in meta for meta in done)  # nothing trained here yet: never mix a build and a bundle
    bundle = prebuilt.find_bundle(spec.as_dict(), spec.key()) if use_prebuilt and installable else None
    if bundle is not None:
        manifest = prebuilt.read_manifest(bundle)
        log(
            INFO,
            "installing the prebuilt toy server models %s (built by `%s` at commit %s; GenAcc %.3f); "
            "`fedmmkt pretrain --force` rebuilds them here",
            bundle.name,
            manifest["build_command"],
            manifest.get("commit", "?")[:10],
            manifest["phases"][EVAL]["gen_acc"],
        )
        phases = _install_phases(spec, bundle)
    else:
        if not done:
            log(INFO, "pre-training the toy server models: %s", build_estimate(spec))
        phases = _training_phases(spec, root, progress)
    metas = {name: _run_phase(root, name, run, f"{i}/{len(phases)}") for i, (name, run) in enumerate(phases.items(), 1)}
    report = {
        "spec_key": spec.key(),
        "phases": metas,
        "total_seconds": sum(m["seconds"] for m in metas.values()),
    }
    _write_atomic(root / "report.json", json.dumps(report, indent=2))
    return _models_in(root)


def _models_in(root: Path) -> PretrainedModels:
    return PretrainedModels(
        root=root,
        t2i=root / T2I,
        captioner=root / CAPTIONER,
        judge=root / JUDGE / "judge.pt",
        reference_features=root / JUDGE / "reference_features.npy",
        report=root / "report.json",
    )


def _training_phases(spec: PretrainSpec, root: Path, progress: bool) -> dict[str, Callable[[Path], dict[str, Any]]]:
    tokenizer = build_tokenizer(spec.tokenizer_max_length)
    return {
        JUDGE: lambda out: _train_judge_phase(spec, out, progress),
        VAE: lambda out: _train_vae_phase(spec, root, tokenizer, out, progress),
        T2I: lambda out: _train_t2i_phase(spec, root, tokenizer, out, progress),
        CAPTIONER: lambda out: _train_captioner_phase(spec, tokenizer, out, progress),
        EVAL: lambda out: _eval_phase(spec, root, out, progress),
    }


def build_estimate(spec: PretrainSpec) -> str:
    """How long a from-scratch build of `spec` takes, from the phase times the shipped bundle
    recorded for its own build (same recipe, same model sizes; budgets scaled), so the first log
    line of a long build says what to expect."""
    manifests = [
        prebuilt.read_manifest(bundle)
        for root in prebuilt.bundle_roots()
        for bundle in (sorted(root.glob("toy-*")) if root.is_dir() else [])
        if (bundle / prebuilt.MANIFEST).is_file()
    ]
    if not manifests:
        return "no reference timing on record (tens of minutes on a 2-core CPU)"
    built, phases = manifests[0]["spec"], manifests[0]["phases"]
    scale = {
        JUDGE: spec.judge_epochs / max(1, built["judge_epochs"]),
        VAE: spec.vae_steps / max(1, built["vae_steps"]),
        T2I: spec.t2i_steps / max(1, built["t2i_steps"]),
        CAPTIONER: spec.captioner_steps / max(1, built["captioner_steps"]),
        EVAL: spec.eval_per_class / max(1, built["eval_per_class"]),
    }
    seconds = sum(phases[name]["build_seconds"] * scale[name] for name in PHASES)
    threads = manifests[0]["machine"]["torch_threads"]
    return (
        f"about {seconds / 60:.0f} min with {threads} torch threads "
        f"(measured on {manifests[0]['machine']['description']}; this process has {torch.get_num_threads()})"
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
    with no_loading_bars():
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
    with no_loading_bars():  # no "Writing model shards" bar in the phase's progress
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
    return {"train_loss": loss, "real_test_caption_acc": _caption_accuracy(spec, model, processor)}


def _eval_phase(spec: PretrainSpec, root: Path, out: Path, progress: bool) -> dict[str, Any]:
    return _evaluate(spec, t2i.load_pipeline(str(root / T2I)), root, out / "samples.png", progress)


def _evaluate(
    spec: PretrainSpec, pipe: StableDiffusionPipeline, root: Path, grid: Path, progress: bool
) -> dict[str, Any]:
    """GenAcc and domain FID of `pipe` against the judge cached in `root`, on the spec's prompts."""
    metrics = quality.evaluate_t2i(
        pipe,
        jdg.load_judge(root / JUDGE / "judge.pt"),
        np.load(root / JUDGE / "reference_features.npy"),
        per_class=spec.eval_per_class,
        seed=spec.seed + 5,
        steps=spec.eval_steps,
        guidance=spec.eval_guidance,
        grid_path=grid,
        progress=progress,
    )
    return {**metrics, "sampler": f"DDIM {spec.eval_steps}, guidance {spec.eval_guidance}"}


def _caption_accuracy(spec: PretrainSpec, model: Any, processor: Any) -> dict[str, float]:
    test_images, test_labels, _ = _split_arrays(splits.IMAGE_TEST, spec.domain)
    return quality.caption_attribute_accuracy(cap.caption_images(model, processor, test_images), test_labels)


def _install_phases(spec: PretrainSpec, bundle: Path) -> dict[str, Callable[[Path], dict[str, Any]]]:
    """Phases that copy a prebuilt bundle into the cache in the layout training writes, with the
    weights back in float32 (so every later load behaves as after a local build)."""
    recorded = prebuilt.read_manifest(bundle)["phases"]

    def meta(name: str) -> dict[str, Any]:
        return {**recorded[name], "source": f"prebuilt {bundle.name}"}

    def judge(out: Path) -> dict[str, Any]:
        shutil.copy2(bundle / JUDGE / "judge.pt", out / "judge.pt")
        images, _, _ = _split_arrays(splits.REFERENCE, spec.domain)
        np.save(out / "reference_features.npy", jdg.judge_features(jdg.load_judge(out / "judge.pt"), images))
        return meta(JUDGE)

    def vae(out: Path) -> dict[str, Any]:
        with no_loading_bars():
            AutoencoderKL.from_pretrained(bundle / T2I / "vae", dtype=torch.float32).save_pretrained(out)
        return meta(VAE)

    def denoiser(out: Path) -> dict[str, Any]:
        _load_sd(bundle / T2I, torch.float32).save_pretrained(out)
        return meta(T2I)

    def captioner(out: Path) -> dict[str, Any]:
        cap.save_captioner(*cap.load_captioner(str(bundle / CAPTIONER), dtype=torch.float32), out)
        return meta(CAPTIONER)

    def evaluation(out: Path) -> dict[str, Any]:
        shutil.copy2(bundle / EVAL / "samples.png", out / "samples.png")
        return meta(EVAL)

    return {JUDGE: judge, VAE: vae, T2I: denoiser, CAPTIONER: captioner, EVAL: evaluation}


def export_prebuilt(
    spec: PretrainSpec, cache_root: Path | None = None, dest: Path | None = None, progress: bool = True
) -> Path:
    """Write the bundle of `spec`'s locally built models into `dest` (default: the package's
    ``prebuilt/`` folder) and return its folder.

    Weights are stored in float16 and the T2I model and captioner are scored again on exactly
    those weights (the manifest's figures are the shipped models', the full-precision build's
    are kept beside them). A cache that was itself installed from a bundle is refused: a bundle
    must come from a build, so ``--force`` (build from scratch) goes with ``--export-prebuilt``.
    """
    models = ensure_pretrained(spec, cache_root, progress, use_prebuilt=False)
    built = models.load_report()["phases"]
    if any("source" in meta for meta in built.values()):
        raise ValueError(f"{models.root} was installed from a prebuilt bundle; export a build (add --force)")
    dest = dest or prebuilt.default_bundle_root()
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".{prebuilt.bundle_name(spec.key())}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with no_loading_bars():
        _load_sd(models.t2i, torch.float16).save_pretrained(tmp / T2I)
    cap.save_captioner(*cap.load_captioner(str(models.captioner), dtype=torch.float16), tmp / CAPTIONER)
    (tmp / JUDGE).mkdir()
    shutil.copy2(models.judge, tmp / JUDGE / "judge.pt")
    (tmp / EVAL).mkdir()
    log(INFO, "scoring the float16 weights to be shipped")
    shipped_pipe = t2i.load_pipeline(str(tmp / T2I), dtype=torch.float32)
    shipped_eval = _evaluate(spec, shipped_pipe, models.root, tmp / EVAL / "samples.png", progress)
    shipped_captions = _caption_accuracy(spec, *cap.load_captioner(str(tmp / CAPTIONER), dtype=torch.float32))
    phases = {name: {**meta, "build_seconds": meta["seconds"]} for name, meta in built.items()}
    for meta in phases.values():
        meta.pop("seconds")
    phases[EVAL] = {**phases[EVAL], **shipped_eval}
    phases[CAPTIONER]["real_test_caption_acc"] = shipped_captions
    manifest = {
        "spec_key": spec.key(),
        "spec": spec.as_dict(),
        "build_command": EXPORT_COMMAND,
        "commit": _git_commit(),
        "built_at": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime((models.root / EVAL).stat().st_mtime)),
        "machine": {
            "description": f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
            "torch_threads": torch.get_num_threads(),
        },
        "weights_dtype": "float16",
        "phases": phases,
        "full_precision": {EVAL: _scores(built[EVAL]), CAPTIONER: built[CAPTIONER]["real_test_caption_acc"]},
        "build_total_seconds": models.load_report()["total_seconds"],
    }
    return prebuilt.publish(tmp, dest / prebuilt.bundle_name(spec.key()), manifest)


def _load_sd(folder: Path, dtype: torch.dtype) -> StableDiffusionPipeline:
    """The saved pipeline as it is (scheduler included), in `dtype`."""
    with no_loading_bars():
        return StableDiffusionPipeline.from_pretrained(
            folder, dtype=dtype, safety_checker=None, requires_safety_checker=False
        )


def _scores(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in ("gen_acc", "fid", "num_images") if k in meta}


def _git_commit() -> str:
    """The commit the build ran from ("unknown" outside a git checkout)."""
    try:
        import subprocess

        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+local changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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
