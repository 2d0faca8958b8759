"""A node's role from its Flower `node_config`, with per-node overrides of the client layout.

In simulation every node has only ``partition-id`` and ``num-partitions`` and takes its slot of
the run config's ``client-layout`` (see `layout.py`). A deployed SuperNode is a real device that
knows what it runs, so its ``--node-config`` may also name it, and those keys win over the layout:

- ``modality`` and ``architecture``: the task model it runs (either alone is enough when the
  other follows: an architecture implies its modality);
- ``data-partition`` and ``num-data-partitions``: which share of its modality's pool it holds.
  They default to the layout's, which are only meaningful when the node keeps the layout's
  modality, so they are required when ``modality`` differs from the layout slot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from task_models.layout import LayoutEntry, NodeRole, assign_node
from task_models.registry import available_models, model_modality
from worlds.modality import MODALITIES


class NodeConfigError(ValueError):
    """A node-config value is invalid; the message names the key and what is allowed."""


class NodeConfig(BaseModel):
    """The node-config keys this ClientApp reads; unknown keys are ignored (Flower may add its own)."""

    # strict: `partition-id = true` is not node 1, and `modality = 3` is not a modality
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True, alias_generator=lambda n: n.replace("_", "-"))

    partition_id: int = Field(ge=0)
    num_partitions: int = Field(ge=1)
    modality: str | None = None
    architecture: str | None = None
    data_partition: int | None = Field(None, ge=0)
    num_data_partitions: int | None = Field(None, ge=1)
    #: where this node keeps its model and synthetic pool across restarts (client_app/persistence.py)
    state_dir: str | None = Field(None, min_length=1, max_length=4096)

    @model_validator(mode="after")
    def _consistent(self) -> NodeConfig:
        if self.partition_id >= self.num_partitions:
            raise ValueError(f"partition-id {self.partition_id} is outside [0, num-partitions={self.num_partitions})")
        if self.modality is not None and self.modality not in MODALITIES:
            raise ValueError(f"modality {self.modality!r} must be one of {list(MODALITIES)}")
        if self.architecture is not None:
            if self.architecture not in available_models():
                raise ValueError(f"architecture {self.architecture!r} is not registered; known: {available_models()}")
            if self.modality is not None and model_modality(self.architecture) != self.modality:
                raise ValueError(
                    f"architecture {self.architecture!r} is a {model_modality(self.architecture)} model, "
                    f"not {self.modality}"
                )
        if (self.data_partition is None) != (self.num_data_partitions is None):
            raise ValueError("data-partition and num-data-partitions must be given together")
        if self.data_partition is not None and self.data_partition >= self.num_data_partitions:
            raise ValueError(
                f"data-partition {self.data_partition} is outside [0, num-data-partitions={self.num_data_partitions})"
            )
        return self


def parse_node_config(node_config: Mapping[str, Any]) -> NodeConfig:
    """Validate a node config; raise `NodeConfigError` naming the bad keys."""
    try:
        return NodeConfig.model_validate(dict(node_config))
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'node-config'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()
        )
        raise NodeConfigError(f"invalid node config {dict(node_config)}: {problems}") from None


def resolve_role(node_config: Mapping[str, Any], layout: list[LayoutEntry]) -> NodeRole:
    """The node's role: its layout slot, overridden by the node config's own keys."""
    cfg = parse_node_config(node_config)
    slot = assign_node(cfg.partition_id, cfg.num_partitions, layout)
    architecture = cfg.architecture
    if architecture is None:
        architecture = slot.architecture if cfg.modality in (None, slot.modality) else None
    if architecture is None:
        raise NodeConfigError(
            f"node config sets modality={cfg.modality!r} but no architecture; add architecture=... "
            f"(one of {available_models(cfg.modality)})"
        )
    modality = model_modality(architecture)
    if cfg.data_partition is not None:
        return NodeRole(modality, architecture, cfg.data_partition, cfg.num_data_partitions)
    if modality != slot.modality:
        raise NodeConfigError(
            f"node config makes partition-id {cfg.partition_id} a {modality} node but the layout has a "
            f"{slot.modality} node there; give data-partition and num-data-partitions too"
        )
    return NodeRole(modality, architecture, slot.partition, slot.num_partitions)


def deployment_node_configs(layout: list[LayoutEntry], num_nodes: int) -> list[dict[str, str | int]]:
    """Explicit node configs for `num_nodes` deployed SuperNodes that reproduce the layout.

    Each config names everything the node runs, so a device's role does not depend on the
    run config's layout (which may change per run).
    """
    configs: list[dict[str, str | int]] = []
    for i in range(num_nodes):
        role = assign_node(i, num_nodes, layout)
        configs.append(
            {
                "partition-id": i,
                "num-partitions": num_nodes,
                "modality": role.modality,
                "architecture": role.architecture,
                "data-partition": role.partition,
                "num-data-partitions": role.num_partitions,
            }
        )
    return configs


def format_node_config(config: Mapping[str, str | int]) -> str:
    """The `--node-config` argument for `flower-supernode`: strings quoted, as Flower parses TOML values."""
    return " ".join(f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}" for k, v in config.items())
