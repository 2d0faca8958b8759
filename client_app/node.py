"""A client node as the ClientApp sees it: its role, private data and persistent model.

Everything is rebuilt from the Context on each message (a deployed SuperNode starts a fresh
process per message); the model weights persist in `context.state`, the data is regenerated
from the shared seed and cached per process.
"""

from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass
from logging import INFO
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log

from client_app.persistence import read_state, restore_synthetic, state_file, state_root, synthetic_arrays, write_state
from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.memo import code_digest, memo_root, remembered
from fedmmkt_strategy.pool_sync import CACHE as SYNTHETIC_CACHE
from task_models import models, registry, training
from task_models.augment import augment
from task_models.calibration import fit_temperature
from task_models.device import resolve_client_device
from task_models.layout import NodeRole
from task_models.models import TaskModel
from task_models.node_config import parse_node_config, resolve_role
from task_models.registry import ModelSpec, build_task_model
from task_models.training import TrainSettings, fit_to_convergence, predict_logits
from worlds import client_data
from worlds.client_data import ClientData, load_client_data
from worlds.modality import to_model_input
from worlds.world import World

MODEL_STATE = "model"
_THIS = sys.modules[__name__]
#: Run-config keys a client's warm-up depends on (with the world spec and the node's role).
WARMUP_KEYS = frozenset(
    {
        "seed",
        "dirichlet-alpha",
        "local-test-fraction",
        "local-val-fraction",
        "lr",
        "batch-size",
        "fusion-dim",
        "client-warmup-epochs",
        "client-warmup-patience",
        "client-augment",
        "client-pretrained",
        "client-width-scale",
        "text-tokenizer",
    }
)
#: Warmed-up weights per `_warmup_key` in this process (in-process federations; a deployed
#: SuperNode starts a process per message and keeps the model in `context.state` instead).
_WARMED_UP: dict[tuple, dict[str, torch.Tensor]] = {}
_WARMUP_CACHE_SIZE = 64


@dataclass
class ClientNode:
    """The role, data and model of this node for one message."""

    config: RunConfig
    world: World
    role: NodeRole
    partition_id: int
    data: ClientData
    model: TaskModel

    state_path: Path | None = None  # where this node's state survives a restart (persistence.py)
    memo_path: Path | None = None  # where its warm-up is kept for later runs (memo.py); None: not kept

    @classmethod
    def from_context(cls, context: Context, run_key: str | None = None) -> ClientNode:
        """This node for one message: config, role, data and model, with the model from
        `context.state`, else from the state file of `run_key` (a restart), else warmed up."""
        config = RunConfig.from_run_config(context.run_config)
        node_config = parse_node_config(context.node_config)
        partition_id = node_config.partition_id
        role = resolve_role(context.node_config, config.layout)  # node-config keys override the layout
        world = config.world()
        data = load_client_data(
            world,
            role.modality,
            role.partition,
            role.num_partitions,
            config.dirichlet_alpha,
            config.local_test_fraction,
            config.local_val_fraction,
        )
        spec = ModelSpec(
            world.num_classes,
            config.fusion_dim,
            world.vocab_size(),
            config.image_size,
            pretrained=config.client_pretrained,
            width_scale=config.client_width_scale,
        )
        # Same seed for the same architecture on every node, so FedAvg groups start equal.
        model = build_task_model(
            role.architecture, spec, seed=config.seed * 7919 + zlib.crc32(role.architecture.encode())
        )
        model.to(resolve_client_device(config.client_device))
        node = cls(config, world, role, partition_id, data, model)
        if config.reuse_cache:  # a SuperNode's own disk (node config state-dir) wins over the run's cache-dir
            own = node_config.state_dir
            node.memo_path = Path(own).expanduser() / "memo" if own else memo_root(config.cache_dir)
        root = state_root(config.client_state_dir, node_config.state_dir, config.cache_dir, config.checkpoint)
        if root is not None and run_key:
            node_key = f"p{partition_id}-{role.modality}-{role.architecture}"
            node.state_path = state_file(root, run_key, node_key)
        if MODEL_STATE in context.state:
            model.load_state_dict(context.state[MODEL_STATE].to_torch_state_dict())
        elif node.state_path is not None and node.state_path.exists():
            node.restore(context)
        elif config.client_warmup_epochs > 0:
            node.warm_up(context)
        return node

    def restore(self, context: Context) -> None:
        """Model and synthetic pool from this node's state file, into the model and `context.state`
        (the node restarted, or the server resumed the run as a new Flower run)."""
        weights, synthetic = read_state(self.state_path)
        self.model.load_state_dict(weights)
        context.state[MODEL_STATE] = ArrayRecord(self.cpu_state())
        restore_synthetic(context.state, SYNTHETIC_CACHE, synthetic)
        role = self.role
        log(INFO, "%s client %s: restored model and pool from %s", role.modality, role.architecture, self.state_path)

    def warm_up(self, context: Context) -> None:
        """Train a fresh model on private data to convergence before its first use (early stopping
        on the node's own validation split): clients join with a task model of their own, trained
        as far as their data allows, so `local` is a strong baseline and their first votes are
        informed (ALGORITHM.md, "Roles and data").

        The result depends only on the node's data, architecture and training keys, never on the
        strategy, so a process that runs several federations (``fedmmkt compare``) trains each
        distinct client once and every strategy starts from the same converged model."""
        key = self._warmup_key()
        if key in _WARMED_UP:
            self.model.load_state_dict(_WARMED_UP[key])
            self.save(context)
            return
        names = list(self.model.state_dict())
        memo_key = {
            "warm-up": repr(key),
            "weights": {name: list(t.shape) for name, t in self.model.state_dict().items()},
            "code": code_digest(training, registry, models, client_data, sys.modules[augment.__module__], _THIS),
        }
        arrays, reused = remembered(self.memo_path, "client-warmup", memo_key, lambda: self._fit_to_convergence(names))
        state = {name: torch.from_numpy(arrays[f"w{i}"]) for i, name in enumerate(names)}
        self.model.load_state_dict(state)
        epochs, best, accuracy = (float(v) for v in arrays["fit"])
        log(
            INFO,
            "%s client %s: warm-up stopped after %d epochs (best %d, local-val accuracy %.3f)%s",
            self.role.modality,
            self.role.architecture,
            epochs,
            best,
            accuracy,
            " [the same warm-up of an earlier run, from the cache]" if reused else "",
        )
        if len(_WARMED_UP) >= _WARMUP_CACHE_SIZE:
            _WARMED_UP.pop(next(iter(_WARMED_UP)))
        _WARMED_UP[key] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.save(context)

    def _fit_to_convergence(self, names: list[str]) -> dict[str, np.ndarray]:
        """The warm-up itself: the converged weights (in `names` order) and what the fit reports."""
        fit = fit_to_convergence(
            self.model,
            self.tensors("train"),
            self.tensors("val"),
            self.train_settings(),
            seed=self.config.seed * 1000,
            max_epochs=self.config.client_warmup_epochs,
            patience=self.config.client_warmup_patience,
        )
        state = self.model.state_dict()
        arrays = {f"w{i}": state[name].detach().cpu().numpy() for i, name in enumerate(names)}
        arrays["fit"] = np.array([fit["epochs"], fit["best-epoch"], fit["val-accuracy"]], np.float64)
        return arrays

    def _warmup_key(self) -> tuple:
        """Everything a warm-up depends on: the world, the node's role, and the client-training keys."""
        run_config = self.config.as_run_config()
        keys = tuple((k, run_config[k]) for k in sorted(run_config) if k in WARMUP_KEYS or k.startswith("hf-"))
        return (self.config.world_spec, self.role, keys)

    def train_settings(self, epochs: int = 1) -> TrainSettings:
        """The node's optimiser settings (`client_train_settings` of its modality)."""
        return client_train_settings(self.config, self.role.modality, epochs)

    def vote_temperature(self) -> float:
        """The temperature of the probabilities this node sends: 1, or with ``client-calibration =
        "temperature"`` the one fitted on its own validation split now (cheap: a few dozen rows)."""
        if self.config.client_calibration != "temperature":
            return 1.0
        x, y = self.tensors("val")
        return fit_temperature(predict_logits(self.model, x, amp=self.config.client_amp), y)

    def cpu_state(self) -> dict[str, torch.Tensor]:
        """The model's weights on the CPU: what `context.state` keeps and what travels."""
        return {key: value.detach().cpu() for key, value in self.model.state_dict().items()}

    def save(self, context: Context) -> None:
        """The model into `context.state`, and with the pool into the state file when there is one."""
        context.state[MODEL_STATE] = ArrayRecord(self.cpu_state())
        self.persist(context)

    def persist(self, context: Context) -> None:
        """Model (as `context.state` holds it) and synthetic pool into the state file, atomically."""
        if self.state_path is None or MODEL_STATE not in context.state:
            return
        weights = context.state[MODEL_STATE].to_torch_state_dict()
        write_state(self.state_path, weights, synthetic_arrays(context.state, SYNTHETIC_CACHE))

    def load_arrays(self, arrays: ArrayRecord) -> None:
        self.model.load_state_dict(arrays.to_torch_state_dict())

    def describe(self, with_label_counts: bool = False) -> ConfigRecord:
        """What this node runs; with `with_label_counts`, also how many private training examples of
        each class it holds (asked for once by class-aware LabVote; docs/protocol.md says what that
        reveals)."""
        record = ConfigRecord(
            {
                P.MODALITY: self.role.modality,
                P.ARCHITECTURE: self.role.architecture,
                P.PARTITION: self.role.partition,
                P.NUM_PARTITIONS: self.role.num_partitions,
                P.PARTITION_ID: self.partition_id,
            }
        )
        if with_label_counts:
            counts = np.bincount(self.data.train.labels, minlength=self.world.num_classes)
            record[P.LABEL_COUNTS] = [int(n) for n in counts]
        return record

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs and labels of 'train', 'val', 'test' or 'global_test'."""
        part = getattr(self.data, split)
        if len(part) == 0:  # an empty split (no validation rows): empty tensors of no particular shape
            return torch.zeros(0), torch.zeros(0, dtype=torch.long)
        return self.model_input(part.inputs), torch.as_tensor(part.labels)

    def model_input(self, raw) -> torch.Tensor:
        """Raw images or texts of this node's modality as its model's input (the world's tokenizer;
        the toy one is encoded without `transformers`)."""
        return to_model_input(self.role.modality, raw, self.world.hub_tokenizer())


def client_train_settings(config: RunConfig, modality: str, epochs: int = 1) -> TrainSettings:
    """A client's optimiser settings under `config`; image clients augment with blur, noise and flips
    when ``client-augment = "blur-noise"`` (every strategy alike, `local` included). Experiments that
    train clients outside a federation use it too, so they measure the clients' own recipe."""
    augmenting = config.client_augment == "blur-noise" and modality == "image"
    return TrainSettings(
        epochs=epochs,
        lr=config.lr,
        batch_size=config.batch_size,
        augment=augment if augmenting else None,
        amp=config.client_amp,
    )
