"""A client's private data: its Dirichlet partition of its modality's pool, split train/val/test.

The partition is flwr-datasets' `DirichletPartitioner` (label skew, alpha from the run config)
computed on the locally regenerated pool, so private samples are never sent anywhere: every
client rebuilds the same pool from the shared seed and keeps only its own share.

The row indices come from `dirichlet_partition` and `train_test_split` below: ports of
`flwr_datasets.partitioner.DirichletPartitioner` (flwr-datasets 0.6) and
`datasets.Dataset.train_test_split` (datasets 4) that draw the same numbers in the same order, so
they pick the same rows, without importing `datasets` (pyarrow, pandas) on a toy-world node: an
edge SuperNode need not install them. tests/test_edge_client.py checks the ports against both.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from math import ceil

import numpy as np

from worlds import splits
from worlds.modality import Modality
from worlds.world import World, WorldSpec, build_world


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


def dirichlet_partition(
    labels: np.ndarray, num_partitions: int, alpha: float, min_partition_size: int, seed: int
) -> list[list[int]]:
    """The row indices of each partition, as ``DirichletPartitioner(num_partitions, "label", alpha,
    min_partition_size, self_balancing=False, shuffle=True, seed=seed)`` assigns them: per class (in
    sorted order) a Dirichlet(alpha) draw splits that class's rows, resampled until every partition
    holds `min_partition_size` rows (at most 10 retries), then each partition is shuffled."""
    if not num_partitions > 0:
        raise ValueError("The number of partitions needs to be greater than zero.")
    if num_partitions > len(labels):
        raise ValueError("The number of partitions needs to be smaller than the number of samples in the dataset.")
    alphas = np.array([float(alpha)], dtype=float).repeat(num_partitions)
    if not (alphas > 0).all():
        raise ValueError(f"Alpha values should be strictly greater than zero. Instead it'd be converted to {alphas}")
    rng = np.random.default_rng(seed=seed)
    targets = np.array(labels)
    classes = sorted(np.unique(targets).tolist())
    sampling_try = 0
    while True:
        partitions: list[list[int]] = [[] for _ in range(num_partitions)]
        for k in classes:
            rows_of_k = np.nonzero(targets == k)[0]
            proportions = rng.dirichlet(alphas)
            cut = (np.cumsum(list(proportions)) * len(rows_of_k)).astype(int)[:-1]
            for indices, share in zip(partitions, np.split(rows_of_k, cut)):
                indices.extend(share.tolist())
        sizes = [len(indices) for indices in partitions]
        if min(sizes) >= min_partition_size:
            break
        warnings.warn(
            f"The specified min_partition_size ({min_partition_size}) was not satisfied for alpha "
            f"({[alphas[i] for i, n in enumerate(sizes) if n == min(sizes)]}) after {sampling_try} attempts at "
            "sampling from the Dirichlet distribution. The probability sampling from the Dirichlet distribution "
            "will be repeated.",
            stacklevel=2,
        )
        if sampling_try == 10:
            raise ValueError(
                "The max number of attempts (10) was reached. Please update the values of alpha and try again."
            )
        sampling_try += 1
    for indices in partitions:
        rng.shuffle(indices)  # a list, as the partitioner shuffles it
    return partitions


def train_test_split(num_rows: int, test_size: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, test) of ``Dataset.train_test_split(test_size=test_size, seed=seed)`` on a
    dataset of `num_rows` rows: a float `test_size` takes ``ceil(test_size * n)`` rows, an int that
    many, both from the front of one seeded permutation."""
    if num_rows == 0:
        return np.arange(0), np.arange(0)
    if (
        isinstance(test_size, int)
        and not 0 < test_size < num_rows
        or isinstance(test_size, float)
        and not 0 < test_size < 1
    ):
        raise ValueError(
            f"test_size={test_size} should be either positive and smaller "
            f"than the number of samples {num_rows} or a float in the (0, 1) range"
        )
    n_test = ceil(test_size * num_rows) if isinstance(test_size, float) else test_size
    n_train = num_rows - n_test
    if n_train == 0:
        raise ValueError(
            f"With n_samples={num_rows}, test_size={test_size} and train_size=None, the "
            "resulting train set will be empty. Adjust any of the aforementioned parameters."
        )
    permutation = np.random.default_rng(seed).permutation(num_rows)
    return permutation[n_test : n_test + n_train], permutation[:n_test]


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
    pool = splits.pool_split(modality)
    labels = world.split_labels(pool)
    seed = world.spec.seed
    share = np.asarray(
        dirichlet_partition(labels, num_partitions, alpha, min(10, len(labels) // (2 * num_partitions)), seed)[
            partition
        ],
        dtype=np.int64,
    )
    train_rows, test_rows = train_test_split(len(share), test_fraction, seed)
    train, test = share[train_rows], share[test_rows]
    val = train[:0]
    val_rows = int(round(val_fraction * (len(train) + len(test))))
    if 0 < val_rows < len(train):
        keep, held_out = train_test_split(len(train), val_rows, seed + 1)
        train, val = train[keep], train[held_out]
    return ClientData(
        train=_as_inputs(world.split_rows(pool, train), modality, all_captions=True),
        val=_as_inputs(world.split_rows(pool, val), modality, all_captions=False),
        test=_as_inputs(world.split_rows(pool, test), modality, all_captions=False),
        global_test=_as_inputs(world.split_rows(splits.test_split(modality)), modality, all_captions=False),
    )
