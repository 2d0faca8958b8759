"""A client node as the ClientApp sees it: its role, private data and persistent model.

Everything is rebuilt from the Context on each message (a deployed SuperNode starts a fresh
process per message); the model weights persist in `context.state`, the data is regenerated
from the shared seed and cached per process.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.config import RunConfig
from task_models.client_data import ClientData, load_client_data
from task_models.layout import NodeRole
from task_models.modality import to_model_input
from task_models.models import TaskModel
from task_models.node_config import resolve_role
from task_models.registry import ModelSpec, build_task_model
from task_models.training import TrainSettings, train_model
from task_models.world import World

MODEL_STATE = "model"


@dataclass
class ClientNode:
    """The role, data and model of this node for one message."""

    config: RunConfig
    world: World
    role: NodeRole
    partition_id: int
    data: ClientData
    model: TaskModel

    @classmethod
    def from_context(cls, context: Context) -> ClientNode:
        config = RunConfig.from_run_config(context.run_config)
        partition_id = int(context.node_config["partition-id"])
        role = resolve_role(context.node_config, config.layout)  # node-config keys override the layout
        world = config.world()
        data = load_client_data(
            world,
            role.modality,
            role.partition,
            role.num_partitions,
            config.dirichlet_alpha,
            config.local_test_fraction,
        )
        spec = ModelSpec(
            world.num_classes,
            config.fusion_dim,
            len(world.tokenizer()),
            config.image_size,
            pretrained=config.client_pretrained,
            width_scale=config.client_width_scale,
        )
        # Same seed for the same architecture on every node, so FedAvg groups start equal.
        model = build_task_model(
            role.architecture, spec, seed=config.seed * 7919 + zlib.crc32(role.architecture.encode())
        )
        node = cls(config, world, role, partition_id, data, model)
        if MODEL_STATE in context.state:
            model.load_state_dict(context.state[MODEL_STATE].to_torch_state_dict())
        elif config.client_warmup_epochs > 0:
            node.warm_up(context)
        return node

    def warm_up(self, context: Context) -> None:
        """Train a fresh model on private data before its first use: clients join with a task model
        of their own, so their first votes on synthetic data are informed, not uniform."""
        settings = TrainSettings(
            epochs=self.config.client_warmup_epochs, lr=self.config.lr, batch_size=self.config.batch_size
        )
        train_model(self.model, *self.tensors("train"), settings, seed=self.config.seed * 1000)
        self.save(context)

    def save(self, context: Context) -> None:
        context.state[MODEL_STATE] = ArrayRecord(self.model.state_dict())

    def load_arrays(self, arrays: ArrayRecord) -> None:
        self.model.load_state_dict(arrays.to_torch_state_dict())

    def describe(self) -> ConfigRecord:
        return ConfigRecord(
            {
                P.MODALITY: self.role.modality,
                P.ARCHITECTURE: self.role.architecture,
                P.PARTITION: self.role.partition,
                P.NUM_PARTITIONS: self.role.num_partitions,
                P.PARTITION_ID: self.partition_id,
            }
        )

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs and labels of 'train', 'test' or 'global_test'."""
        part = getattr(self.data, split)
        return self.model_input(part.inputs), torch.as_tensor(part.labels)

    def model_input(self, raw) -> torch.Tensor:
        """Raw images or texts of this node's modality as its model's input (the world's tokenizer)."""
        return to_model_input(self.role.modality, raw, self.world.tokenizer())
