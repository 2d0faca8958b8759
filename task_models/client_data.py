"""A client's private data: its Dirichlet partition of its modality's pool, split train/val/test.

The partition is computed with flwr-datasets' `DirichletPartitioner` (label skew, alpha from
the run config) on the locally regenerated pool, so private samples are never sent anywhere:
every client rebuilds the same pool from the shared seed and keeps only its own share.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from flwr_datasets.partitioner import DirichletPartitioner

from task_models import splits
from task_models.modality import Modality
from task_models.world import World, WorldSpec, build_world


@dataclass(frozen=True)
class LabelledInputs:
    """Raw inputs of one modality (uint8 images, caption strings or float32 sensor readings) with labels."""

    inputs: np.ndarray | list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class ClientData:
    """A client's local train, validation and test splits, and the global balanced test set of its
    modality. The validation split (possibly empty) is the client's own, for early stopping and
    any other choice a client makes without looking at a global test set."""

    train: LabelledInputs
    val: LabelledInputs
    test: LabelledInputs
    global_test: LabelledInputs


def _as_inputs(rows: dict, modality: Modality, all_captions: bool) -> LabelledInputs:
    labels = np.asarray(rows["label"], dtype=np.int64)
    if modality == "image":
        return LabelledInputs(np.asarray(rows["image"], dtype=np.uint8), labels)
    if modality == "sensor":
        return LabelledInputs(np.asarray(rows["sensor"], dtype=np.float32), labels)
    captions = [list(c) for c in rows["captions"]]
    if all_captions:  # every caption of a training image is a training text
        texts = [str(t) for caps in captions for t in caps]
        return LabelledInputs(texts, np.repeat(labels, [len(c) for c in captions]))
    return LabelledInputs([str(caps[0]) for caps in captions], labels)


@lru_cache(maxsize=4)
def load_client_data(
    spec: WorldSpec | World,
    modality: Modality,
    partition: int,
    num_partitions: int,
    alpha: float,
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
) -> ClientData:
    """Partition `modality`'s pool with Dirichlet(alpha) and return this client's share.

    `spec` is a toy `DomainSpec`, a paper `PaperDataSpec` or an already built `World`. The local
    test split is `test_fraction` of the partition (the same rows whatever `val_fraction` is); the
    validation split is `val_fraction` of the partition, taken from the rest.
    """
    world = spec if isinstance(spec, World) else build_world(spec)
    pool = world.load_split(splits.pool_split(modality))
    partitioner = DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=alpha,
        min_partition_size=min(10, len(pool) // (2 * num_partitions)),
        seed=world.spec.seed,
    )
    partitioner.dataset = pool
    part = partitioner.load_partition(partition).train_test_split(test_size=test_fraction, seed=world.spec.seed)
    train, val = part["train"], part["train"].select([])
    val_rows = int(round(val_fraction * (len(part["train"]) + len(part["test"]))))
    if 0 < val_rows < len(train):
        split = train.train_test_split(test_size=val_rows, seed=world.spec.seed + 1)
        train, val = split["train"], split["test"]
    global_test = world.load_split(splits.test_split(modality))
    return ClientData(
        train=_as_inputs(train.with_format("numpy")[:], modality, all_captions=True),
        val=_as_inputs(val.with_format("numpy")[:], modality, all_captions=False),
        test=_as_inputs(part["test"].with_format("numpy")[:], modality, all_captions=False),
        global_test=_as_inputs(global_test.with_format("numpy")[:], modality, all_captions=False),
    )
