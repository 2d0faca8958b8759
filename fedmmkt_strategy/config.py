"""The run configuration: every knob of `[tool.flwr.app.config]`, validated by pydantic.

Both apps parse `context.run_config` through `RunConfig.from_run_config` before doing any work,
so a wrong value stops the run at once with a message that names the key, the value and what is
allowed, instead of failing minutes later inside a round.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from task_models.layout import LayoutEntry, parse_layout
from worlds.hf_datasets import PaperDataSpec
from worlds.splits import DomainSpec
from worlds.world import World, build_world

STRATEGY_NAMES = ("local", "fedavg", "fedmd", "creamfl", "self-ft", "fedmmkt")
StrategyName = Literal["local", "fedavg", "fedmd", "creamfl", "self-ft", "fedmmkt"]
#: Seeds are combined into others (`seed * 1000 + round`, numpy's and torch's generators): keep
#: them far from 2^63.
MAX_SEED = 2**31 - 1
#: Strategies whose client uploads are sums secure aggregation can hide (secure_round.py).
SECURE_STRATEGIES = ("fedmmkt", "fedmd", "creamfl")
#: The cross-attention heads of the fusion (`fusion.CrossModalFusion`): `fusion-dim` must split into them.
FUSION_HEADS = 4
#: The toy world's server models, built by pre-training into the cache (see `fedmmkt pretrain`).
LOCAL_TOY_MODEL = "local:tiny-flowers"


class ConfigError(ValueError):
    """A run-config value is invalid; the message says which key and what to change."""


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class RunConfig(BaseModel):
    """Validated run configuration; field names are the run-config keys with '-' written '_'."""

    # strict: `true` is not an int and 1.0 is not a step count; no NaN or Inf anywhere (`lr = inf`
    # would "complete" a run with NaN losses). Upper bounds keep sizes within memory.
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=_kebab, populate_by_name=True, strict=True, allow_inf_nan=False
    )

    # -- federation
    strategy: StrategyName = "fedmmkt"
    num_server_rounds: int = Field(5, ge=1, le=100_000)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    client_layout: str = "image:cnn,image:resnet,image:cnn-small,image:vit,text:gru,text:transformer,text:gru,text:bow"
    dirichlet_alpha: float = Field(0.1, gt=0, le=1e6)
    local_test_fraction: float = Field(0.2, gt=0, lt=1)
    local_val_fraction: float = Field(0.15, ge=0, lt=1)
    # -- the world: "toy" (offline default) or "hf" (paper profile, a Hugging Face image-text dataset)
    dataset: Literal["toy", "hf"] = "toy"
    hf_dataset: str = ""
    hf_split: str = "train"
    hf_image_column: str = "image"
    hf_text_column: str = "text"
    hf_label_column: str = "label"
    hf_max_samples: int = Field(0, ge=0, le=100_000_000)
    hf_prompt_template: str = "a photo of a {}"
    text_tokenizer: str = ""
    client_pretrained: bool = False
    client_width_scale: float = Field(1.0, gt=0, le=1)
    # -- toy domain
    image_size: int = Field(32, ge=16, le=1024)
    pool_size: int = Field(4000, ge=100, le=1_000_000)
    test_per_class: int = Field(20, ge=1, le=10_000)
    caption_partial_rate: float = Field(0.4, ge=0, le=1)
    public_confusion_rate: float = Field(0.6, ge=0, le=1)
    sensor_missing_rate: float = Field(0.15, ge=0, lt=1)
    # -- client training
    local_epochs: int = Field(2, ge=1, le=10_000)
    client_warmup_epochs: int = Field(100, ge=0, le=10_000)
    client_warmup_patience: int = Field(10, ge=1)
    client_augment: Literal["none", "blur-noise"] = "blur-noise"
    lr: float = Field(2e-3, gt=0, le=10)
    batch_size: int = Field(64, ge=1, le=65_536)
    fusion_dim: int = Field(128, ge=FUSION_HEADS, le=4096)
    distill_temperature: float = Field(2.0, ge=0.05, le=100)
    lambda_kl: float = Field(1.0, ge=0)
    lambda_rep: float = Field(0.5, ge=0)
    distill_passes: float = Field(2.0, ge=0)
    # -- server models (toy: built into the cache on first use; paper: a folder or hub id)
    t2i_model: str = LOCAL_TOY_MODEL
    captioner_model: str = LOCAL_TOY_MODEL
    cache_dir: str = ""
    reuse_cache: bool = True  # memo.py: seeded work of earlier runs (round-0 score, round-1 pool, warm-ups)
    pretrain_seed: int = Field(0, ge=0, le=MAX_SEED)
    pretrain_judge_epochs: int = Field(60, ge=1)
    pretrain_vae_steps: int = Field(400, ge=1)
    pretrain_t2i_steps: int = Field(2200, ge=1)
    pretrain_t2i_lr: float = Field(1e-3, gt=0, le=1)
    pretrain_captioner_steps: int = Field(3600, ge=1)
    pretrain_eval_per_class: int = Field(10, ge=1, le=1000)
    pretrain_holdout_classes: str = ""
    # -- step 1: synthesis
    synthetic_size: int = Field(384, ge=2, le=100_000)
    refresh_fraction: float = Field(0.5, ge=0, le=1)
    sampling_steps: int = Field(25, ge=1)
    guidance_scale: float = Field(3.0, ge=1)
    generation_batch_size: int = Field(64, ge=1, le=4096)
    # -- steps 3-5: LabVote, MultiRepFusion, T2I update (ablation switches: use-*)
    labvote_beta: float = Field(0.5, ge=0, le=1)
    labvote_prompt_mix: float = Field(0.0, ge=0, le=1)
    labvote_class_weights: Literal["none", "label-counts"] = "label-counts"
    labvote_targets: Literal["soft", "hard"] = "soft"
    contrastive_tau: float = Field(0.1, ge=1e-3, le=100)
    contrastive_batch: int = Field(1024, ge=2, le=100_000)
    fusion_steps: int = Field(50, ge=0)
    fusion_lr: float = Field(1e-3, gt=0, le=1)
    fusion_other_modalities: Literal["attention", "mean"] = "attention"
    t2i_steps_per_round: int = Field(20, ge=0)
    t2i_update_fraction: float = Field(1.0, gt=0, le=1)
    t2i_pairs: Literal["voted", "confirmed"] = "confirmed"
    t2i_lr: float = Field(5e-5, gt=0, le=1)
    t2i_batch_size: int = Field(32, ge=1, le=4096)
    t2i_warmup_steps: int = Field(10, ge=0)
    t2i_ema_decay: float = Field(0.9, ge=0, lt=1)
    t2i_replay_fraction: float = Field(0.75, ge=0, lt=1)
    t2i_lora: Literal["auto", "on", "off"] = "auto"
    server_device: Literal["auto", "cpu", "cuda"] = "auto"
    client_device: Literal["auto", "cpu", "cuda"] = "auto"
    client_amp: bool = True
    client_calibration: Literal["none", "temperature"] = "none"
    client_threads: int = Field(0, ge=0, le=1024)  # 0: the process's own count (client_app.pin_threads)
    server_threads: int = Field(0, ge=0, le=1024)  # 0: the process's own count (runner.use_server_threads)
    client_state_dir: str = Field("auto", min_length=1, max_length=4096)
    t2i_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    use_labvote: bool = True
    use_contrastive_aggregation: bool = True
    use_cross_attention: bool = True
    use_t2i_update: bool = True
    # -- T2I quality (GenAcc, domain FID, sample grid)
    t2i_eval_every: int = Field(2, ge=0)
    t2i_eval_per_class: int = Field(4, ge=1, le=1000)
    t2i_final_eval_per_class: int = Field(10, ge=1, le=1000)
    t2i_eval_initial: bool = True
    clip_model: str = ""
    standard_fid: bool = False
    # -- sampling, quorum, timeouts
    min_nodes: int = Field(2, ge=1)
    sample_fraction: float = Field(1.0, gt=0, le=1)
    sample_deadline: float = Field(120.0, gt=0)
    node_settle: float = Field(2.0, ge=0)
    round_timeout: float = Field(900.0, gt=0)
    query_timeout: float = Field(0.0, ge=0)  # per-phase waits (timeouts.py); 0: round-timeout
    train_timeout: float = Field(0.0, ge=0)
    evaluate_timeout: float = Field(0.0, ge=0)
    min_reply_fraction: float = Field(0.5, gt=0, le=1)
    # -- outputs
    results_dir: str = "~/fedmmkt-results"
    run_name: str = ""
    trackers: str = "tensorboard"
    # -- robustness: Byzantine-robust vote, checkpoint and resume, differential privacy of uploads
    labvote_robust: Literal["none", "reliability"] = "none"
    labvote_reliability_decay: float = Field(0.5, ge=0, lt=1)
    checkpoint: bool = True
    resume: str = ""
    dp_noise_multiplier: float = Field(0.0, ge=0)
    dp_clip: float = Field(1.0, gt=0)
    dp_delta: float = Field(1e-5, gt=0, lt=1)
    # -- secure aggregation of the vote and fusion sums (secure_round.py; what is lost: docs/robustness.md)
    secure_aggregation: bool = False
    secagg_threshold: float = Field(0.5, gt=0, le=1)
    # -- communication: dtype of the query.infer arrays (float16 halves the uplink; validation.py)
    uplink_dtype: Literal["float32", "float16"] = "float32"

    @field_validator("client_layout")
    @classmethod
    def _layout_is_valid(cls, value: str) -> str:
        parse_layout(value)
        return value

    @field_validator("trackers")
    @classmethod
    def _trackers_are_known(cls, value: str) -> str:
        from fedmmkt_strategy.reporting.trackers import parse_trackers

        parse_trackers(value, require_installed=False)  # installed or not is the server's concern
        return value

    @field_validator("pretrain_holdout_classes")
    @classmethod
    def _holdout_is_valid(cls, value: str) -> str:
        parse_class_list(value)
        return value

    @field_validator("hf_prompt_template")
    @classmethod
    def _template_has_slot(cls, value: str) -> str:
        if value.count("{}") != 1:
            raise ValueError("must contain '{}' exactly once, where the class name goes")
        return value

    @model_validator(mode="after")
    def _world_is_consistent(self) -> RunConfig:
        if self.fusion_dim % FUSION_HEADS:
            raise ValueError(f"fusion-dim = {self.fusion_dim} must be a multiple of the {FUSION_HEADS} attention heads")
        if self.local_test_fraction + self.local_val_fraction >= 1:
            raise ValueError(
                f"local-test-fraction + local-val-fraction = {self.local_test_fraction + self.local_val_fraction:g}:"
                " must stay below 1, or a client keeps no training data"
            )
        if self.secure_aggregation:
            if self.strategy not in SECURE_STRATEGIES:
                raise ValueError(
                    f"secure-aggregation = true applies to the knowledge-transfer uploads of "
                    f"{', '.join(SECURE_STRATEGIES)}; strategy = {self.strategy!r} sends none"
                )
            if self.labvote_robust != "none":
                raise ValueError(
                    "secure-aggregation = true hides every client's votes, so labvote-robust = "
                    f"{self.labvote_robust!r} cannot score them: set labvote-robust = 'none'"
                )
        if self.dataset == "toy" and self.image_size not in (32, 64):
            raise ValueError(f"image-size = {self.image_size}: the toy world renders 32 or 64 pixels only")
        if self.dataset == "hf":
            if any(entry.modality == "sensor" for entry in self.layout):
                raise ValueError("client-layout has sensor clients, which only the toy world (dataset = 'toy') has")
            if self.pretrain_holdout_classes:
                raise ValueError("pretrain-holdout-classes applies to the toy world's pre-training only")
            if not self.hf_dataset:
                raise ValueError("hf-dataset is empty: dataset = 'hf' needs a hub id or a local parquet file/folder")
            for key, value in (("t2i-model", self.t2i_model), ("captioner-model", self.captioner_model)):
                if value == LOCAL_TOY_MODEL:
                    raise ValueError(f"{key} = {value!r} is the toy world's model; dataset = 'hf' needs a folder or id")
        return self

    @property
    def world_spec(self) -> DomainSpec | PaperDataSpec:
        """The data a run lives in: the toy `DomainSpec` or the paper dataset's `PaperDataSpec`."""
        if self.dataset == "toy":
            return self.domain
        return PaperDataSpec(
            source=self.hf_dataset,
            split=self.hf_split,
            image_column=self.hf_image_column,
            text_column=self.hf_text_column,
            label_column=self.hf_label_column,
            image_size=self.image_size,
            max_samples=self.hf_max_samples,
            seed=self.seed,
        )

    def world(self) -> World:
        """The run's world (class names, prompts, splits, text tokenizer); loads a paper dataset once."""
        return build_world(self.world_spec, self.hf_prompt_template, self.text_tokenizer)

    @property
    def layout(self) -> list[LayoutEntry]:
        return parse_layout(self.client_layout)

    @property
    def domain(self) -> DomainSpec:
        """The toy world's sizes, shared by server and clients so every node rebuilds the same pools."""
        return DomainSpec(
            seed=self.seed,
            image_size=self.image_size,
            pool_size=self.pool_size,
            test_per_class=self.test_per_class,
            caption_partial_rate=self.caption_partial_rate,
            public_confusion_rate=self.public_confusion_rate,
            public_holdout_classes=parse_class_list(self.pretrain_holdout_classes),
            sensor_missing_rate=self.sensor_missing_rate,
        )

    @property
    def tracker_names(self) -> tuple[str, ...]:
        from fedmmkt_strategy.reporting.trackers import parse_trackers

        return parse_trackers(self.trackers)

    def check_server_packages(self) -> None:
        """Raise `ConfigError` naming the key when a server-side setting needs a package this
        process lacks (a tracker). Called by the server before any work; clients never need these."""
        from fedmmkt_strategy.reporting.trackers import parse_trackers

        try:
            parse_trackers(self.trackers, require_installed=True)
        except ValueError as err:
            raise ConfigError(
                f"invalid run config:\n  trackers = {self.trackers!r}: {err}\n"
                "change it in [tool.flwr.app.config] of pyproject.toml or pass --run-config 'key=value' to flwr run"
            ) from None

    @property
    def results_path(self) -> Path:
        return Path(self.results_dir).expanduser()

    def as_run_config(self) -> dict[str, Any]:
        """The config as run-config keys (kebab-case), e.g. for metrics.json."""
        return self.model_dump(by_alias=True)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Validate a Flower run config; raise `ConfigError` naming every bad key."""
        try:
            return cls.model_validate(dict(run_config))
        except ValidationError as err:
            raise ConfigError(format_errors(err)) from None


def parse_class_list(text: str) -> tuple[int, ...]:
    """``"3,7,11"`` -> (3, 7, 11), sorted and unique; a Flower run-config value cannot be a list.

    Raises ValueError for anything but comma-separated toy class labels in [0, NUM_CLASSES), or
    for holding out every class (the server would have no public data at all).
    """
    from worlds.domain import NUM_CLASSES

    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):
        raise ValueError(f"{text!r} must be comma-separated class labels, e.g. '3,7,11'")
    labels = tuple(sorted({int(p) for p in parts}))
    if any(y >= NUM_CLASSES for y in labels):
        raise ValueError(f"class labels must lie in [0, {NUM_CLASSES})")
    if len(labels) >= NUM_CLASSES:
        raise ValueError("cannot hold out every class")
    return labels


def format_errors(err: ValidationError) -> str:
    """One line per bad key: the key, the value given, what is allowed, and where to change it."""
    lines = ["invalid run config:"]
    for e in err.errors():
        key = ".".join(str(part) for part in e["loc"]) or "<config>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key; known keys: {', '.join(sorted(_known_keys()))}")
        else:
            message = e["msg"].removeprefix("Value error, ")
            lines.append(f"  {key} = {e.get('input')!r}: {message}" if e["loc"] else f"  {message}")
    lines.append("change it in [tool.flwr.app.config] of pyproject.toml or pass --run-config 'key=value' to flwr run")
    return "\n".join(lines)


def _known_keys() -> list[str]:
    return [_kebab(name) for name in RunConfig.model_fields]


def project_defaults() -> dict:
    """The run config of pyproject.toml (`[tool.flwr.app.config]`), when run from the project folder;
    {} elsewhere. The commands outside `flwr run` (`fedmmkt pretrain`, `compare`, the experiments)
    start from it so they see the same defaults a `flwr run` would."""
    pyproject = Path("pyproject.toml")
    if not pyproject.exists():
        return {}
    return tomllib.loads(pyproject.read_text()).get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})


#: Where the presets are: inside the package in a wheel (pyproject's force-include), else the
#: repository's top-level `presets/` (an editable install or a checkout).
PRESET_DIRS = (Path(__file__).parent / "presets", Path(__file__).resolve().parents[1] / "presets")


def preset_path(name: str) -> Path:
    """The file of preset `name` (`presets/<name>.toml`), or a ConfigError listing the presets there are."""
    for folder in PRESET_DIRS:
        path = folder / f"{name}.toml"
        if path.is_file():
            return path
    known = sorted({p.stem for folder in PRESET_DIRS if folder.is_dir() for p in folder.glob("*.toml")})
    raise ConfigError(f"no preset {name!r} (presets/{name}.toml); there are: {', '.join(known) or 'none'}")


def load_preset(name: str) -> dict[str, Any]:
    """One preset file as a dict: run-config keys for the flat ones (e.g. `micro-server`, also
    usable as `flwr run . --run-config presets/micro-server.toml`), tables for `variants` and
    `comparisons`. The one loader of every size set, variant and comparison the project names."""
    path = preset_path(name)
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
