"""The server's models for one run: T2I pipeline `G`, captioner `B`, the judge for GenAcc/FID,
and the fixed projection that turns `G`'s text encoding of a caption into a round-1 anchor.

`local:tiny-flowers` (the toy default) means: the pre-trained tiny models from the cache,
built on first use (`fedmmkt pretrain` does the same ahead of time). Anything else is a folder
or a hub id handed to `from_pretrained`, the paper profile's path through the same code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from logging import INFO
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from flwr.common.logger import log
from transformers import BlipForConditionalGeneration, BlipProcessor

from fedmmkt_strategy.config import LOCAL_TOY_MODEL, RunConfig
from fedmmkt_strategy.generative.captioner import load_captioner
from fedmmkt_strategy.generative.device import resolve_device, resolve_dtype
from fedmmkt_strategy.generative.finetune import PairSet
from fedmmkt_strategy.generative.judge import JudgeCNN, judge_features, load_judge, train_judge
from fedmmkt_strategy.generative.pretrain import PretrainSpec, ensure_pretrained
from fedmmkt_strategy.generative.quality import resize_images
from fedmmkt_strategy.generative.t2i import default_size, load_pipeline
from fedmmkt_strategy.memo import weights_digest
from worlds import splits
from worlds.splits import DomainSpec
from worlds.world import World


@dataclass
class ServerModels:
    """Everything the server runs besides the fusion module."""

    pipe: StableDiffusionPipeline
    captioner: BlipForConditionalGeneration
    processor: BlipProcessor
    judge: JudgeCNN | None
    reference_features: np.ndarray | None
    anchor_projection: torch.Tensor  # [text hidden, d], fixed and seeded


def pretrain_spec(config: RunConfig) -> PretrainSpec:
    """The pre-training spec of the toy server models this run config asks for.

    Only what the server's public and reference splits depend on enters it, seeded by
    `pretrain-seed`: the run seed and the clients' pool and test sizes do not, so a comparison
    over seeds shares one pre-trained model and changing them never triggers a new pre-training.
    """
    server_domain = dataclasses.replace(
        config.domain,
        seed=config.pretrain_seed,
        pool_size=DomainSpec.pool_size,
        test_per_class=DomainSpec.test_per_class,
    )
    return dataclasses.replace(
        PretrainSpec(),
        domain=server_domain,
        seed=config.pretrain_seed,
        judge_epochs=config.pretrain_judge_epochs,
        vae_steps=config.pretrain_vae_steps,
        t2i_steps=config.pretrain_t2i_steps,
        t2i_lr=config.pretrain_t2i_lr,
        captioner_steps=config.pretrain_captioner_steps,
        eval_per_class=config.pretrain_eval_per_class,
    )


def train_reference_judge(world: World, config: RunConfig) -> tuple[JudgeCNN, np.ndarray]:
    """The paper world's judge: trained at start on the held-out REFERENCE split (never seen by the
    federation), with the toy judge's blur/noise augmentation; plus its features of those images."""
    data = world.load_split(splits.REFERENCE).with_format("numpy")[:]
    images, labels = data["image"].astype(np.uint8), data["label"].astype(np.int64)
    log(INFO, "training the GenAcc judge on %d held-out real images (%d classes)", len(images), world.num_classes)
    judge = train_judge(images, labels, world.num_classes, epochs=config.pretrain_judge_epochs, seed=config.seed)
    return judge, judge_features(judge, images)


def load_server_models(config: RunConfig) -> ServerModels:
    """Load (building the toy cache if needed) the server models named by the run config.

    They run on ``server-device`` in ``t2i-dtype`` (auto: bfloat16 on CUDA, float32 on CPU).
    """
    cache = Path(config.cache_dir).expanduser() if config.cache_dir else None
    toy = None
    if LOCAL_TOY_MODEL in (config.t2i_model, config.captioner_model):
        toy = ensure_pretrained(pretrain_spec(config), cache, progress=True)
        report = toy.load_report()["phases"]["eval"]
        log(
            INFO, "pre-trained T2I model: GenAcc %.3f, domain FID %.2f (%s)", report["gen_acc"], report["fid"], toy.root
        )
    device = resolve_device(config.server_device)
    dtype = resolve_dtype(config.t2i_dtype, device)
    pipe = load_pipeline(
        str(toy.t2i) if config.t2i_model == LOCAL_TOY_MODEL else config.t2i_model, dtype=dtype, device=device
    )
    captioner, processor = load_captioner(
        str(toy.captioner) if config.captioner_model == LOCAL_TOY_MODEL else config.captioner_model,
        device=device,
        dtype=dtype,
    )
    if toy:
        judge, reference = load_judge(toy.judge), np.load(toy.reference_features)
    elif config.dataset == "hf":
        judge, reference = train_reference_judge(config.world(), config)
    else:
        judge, reference = None, None
    generator = torch.Generator().manual_seed(config.seed + 4242)
    hidden = pipe.text_encoder.config.hidden_size
    projection = torch.randn(hidden, config.fusion_dim, generator=generator) / hidden**0.5
    return ServerModels(pipe, captioner, processor, judge, reference, projection)


def public_pairs(config: RunConfig) -> tuple[np.ndarray, list[list[str]]]:
    """The server's own public image-caption pairs, replayed by step 5: uint8 images [P, H, W, 3]
    and the captions of each. In the toy world these are the pairs its T2I model was pre-trained
    on (the PUBLIC split seeded by `pretrain-seed`, with its deliberate confusions), not a new
    sample seeded by the run."""
    if config.dataset == "toy":
        data = splits.load_split(splits.PUBLIC, pretrain_spec(config).domain)
    else:
        data = config.world().load_split(splits.PUBLIC)
    rows = data.with_format("numpy")[:]
    return rows["image"].astype(np.uint8), [[str(c) for c in caps] for caps in rows["captions"]]


#: Encoded public replay sets of this process, by `_replay_key`. Every run of a process that
#: starts from the same pre-trained models (`fedmmkt compare`, the experiments, the test suite)
#: would otherwise encode the same public pairs with the same frozen VAE again: 3,000 pairs, about
#: 40 % of a micro run. Two entries: paper-scale sets are large, and a process rarely alternates more.
_PUBLIC_REPLAY: dict[tuple, PairSet] = {}
_PUBLIC_REPLAY_SIZE = 2


def public_replay(pipe: StableDiffusionPipeline, config: RunConfig) -> PairSet:
    """`public_pairs` resized to the pipeline's size and encoded for step 5's replay (one row per
    caption), computed once per process for the same public split, VAE weights and tokenizer.
    Shared read-only: the fine-tuner only draws from it, and runs never train the VAE."""
    key = _replay_key(pipe, config)
    if key not in _PUBLIC_REPLAY:
        images, captions = public_pairs(config)
        images = resize_images(images, default_size(pipe))
        flat = [c for caps in captions for c in caps]
        index = np.repeat(np.arange(len(images)), [len(c) for c in captions])
        if len(_PUBLIC_REPLAY) >= _PUBLIC_REPLAY_SIZE:
            _PUBLIC_REPLAY.pop(next(iter(_PUBLIC_REPLAY)))
        _PUBLIC_REPLAY[key] = PairSet.encode(pipe, images, flat, image_index=index)
    return _PUBLIC_REPLAY[key]


def _replay_key(pipe: StableDiffusionPipeline, config: RunConfig) -> tuple:
    """What an encoded replay set depends on: the public split (the toy server's pre-training
    domain or the paper world), the image size, the VAE's weights and device, the tokenizer."""
    public = repr(pretrain_spec(config).domain) if config.dataset == "toy" else repr(config.world_spec)
    tokenizer = (pipe.tokenizer.name_or_path, len(pipe.tokenizer), pipe.tokenizer.model_max_length)
    return public, default_size(pipe), str(pipe.vae.device), weights_digest(pipe.vae), tokenizer


def misdrawn_prompt_classes(config: RunConfig) -> np.ndarray:
    """The classes the toy server's T2I model is pre-trained to draw wrongly (its public split's
    deliberate confusions, `splits.misdrawn_classes`); empty in the paper world, where nobody
    knows them."""
    if config.dataset != "toy":
        return np.zeros(0, np.int64)
    return splits.misdrawn_classes(pretrain_spec(config).domain)


@torch.no_grad()
def caption_anchors(models: ServerModels, captions: list[str], batch_size: int = 256) -> torch.Tensor:
    """Round-1 anchors: `G`'s text-encoder embedding of each caption, randomly projected to d,
    L2-normalised. [N, d]."""
    tokenizer, encoder = models.pipe.tokenizer, models.pipe.text_encoder
    out = []
    for start in range(0, len(captions), batch_size):
        ids = tokenizer(
            captions[start : start + batch_size],
            padding="max_length",
            truncation=True,
            max_length=tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids
        hidden = encoder(ids.to(encoder.device))[0].float().cpu()  # [B, L, h]
        mask = (ids != tokenizer.pad_token_id).unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        out.append(F.normalize(pooled.float() @ models.anchor_projection, dim=-1))
    return torch.cat(out)
