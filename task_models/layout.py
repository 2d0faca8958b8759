"""Which modality, architecture and data partition a node runs.

The run config holds one client layout string, e.g. ``"image:cnn,image:resnet,text:gru"``.
Node ``partition-id`` i (from its `node_config`) takes entry ``i mod len(layout)``; its data
partition is its rank among the nodes of the same modality, so image and text pools are each
split across exactly the clients of that modality.
"""

from __future__ import annotations

from dataclasses import dataclass

from task_models.registry import available_models, model_modality
from worlds.modality import MODALITIES, Modality


@dataclass(frozen=True)
class LayoutEntry:
    """One slot of the client layout."""

    modality: Modality
    architecture: str


@dataclass(frozen=True)
class NodeRole:
    """What one node runs: its model, and which partition of its modality's pool it holds."""

    modality: Modality
    architecture: str
    partition: int
    num_partitions: int


def parse_layout(text: str) -> list[LayoutEntry]:
    """Parse ``"modality:architecture,..."``; raise ValueError naming the bad entry."""
    entries: list[LayoutEntry] = []
    for raw in (part.strip() for part in text.split(",")):
        modality, sep, arch = raw.partition(":")
        if not sep or not arch:
            raise ValueError(f"layout entry {raw!r} must look like 'image:cnn', 'text:gru' or 'sensor:mlp'")
        if modality not in MODALITIES:
            raise ValueError(f"layout entry {raw!r}: modality must be one of {list(MODALITIES)}")
        if arch not in available_models():
            raise ValueError(f"layout entry {raw!r}: unknown architecture; registered: {available_models(modality)}")
        if model_modality(arch) != modality:
            raise ValueError(f"layout entry {raw!r}: {arch!r} is a {model_modality(arch)} model")
        entries.append(LayoutEntry(modality, arch))  # type: ignore[arg-type]
    if not entries:
        raise ValueError("the client layout is empty")
    return entries


def assign_node(partition_id: int, num_partitions: int, layout: list[LayoutEntry]) -> NodeRole:
    """The role of node `partition_id` among `num_partitions` nodes."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside [0, {num_partitions})")
    slots = [layout[i % len(layout)] for i in range(num_partitions)]
    mine = slots[partition_id]
    same = [i for i, s in enumerate(slots) if s.modality == mine.modality]
    return NodeRole(mine.modality, mine.architecture, same.index(partition_id), len(same))
