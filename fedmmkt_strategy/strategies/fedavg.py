"""`fedavg`: parameter averaging among the clients that share an architecture.

Heterogeneous clients cannot average with each other, so each architecture forms its own
FedAvg group: the server keeps one global model per architecture, sends it with every train and
evaluate message to that architecture's clients, and replaces it by the example-weighted mean
of their trained weights.

An upload enters the mean only if it is the architecture's model: the same keys, shapes and
dtypes as the group's current global model (in round 1, as more than half of the group's
uploads), finite values no larger than `MAX_ABS_WEIGHT`, from a client that trained on at least
one example. One
NaN, a tensor of shape (1, ...) that would broadcast, or float64 weights would otherwise spread
into every client of the architecture. A rejected upload fails its node's train phase (logged,
in `metrics.json`); the rest of the group is averaged.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.federation.replies import PhaseOutcome
from fedmmkt_strategy.strategies.base import FederatedStrategy

#: No trained weight of a task model comes near this (float16 overflows at 65504); beyond it, an
#: upload is overflow or poison, and one such value would dominate the whole average.
MAX_ABS_WEIGHT = 1e6

Signature = tuple[tuple[str, tuple[int, ...], str], ...]


def signature(record: ArrayRecord) -> Signature:
    """Keys, shapes and dtypes of a state dict: what two uploads must share to be averaged."""
    return tuple((key, tuple(array.shape), str(array.dtype)) for key, array in record.items())


def check_upload(record: ArrayRecord, reference: Signature) -> str | None:
    """None if `record` can enter the average of models with signature `reference`, else why."""
    mine = signature(record)
    if mine != reference:
        keys, ref_keys = {k for k, _, _ in mine}, {k for k, _, _ in reference}
        if keys != ref_keys:
            missing, unexpected = sorted(ref_keys - keys)[:3], sorted(keys - ref_keys)[:3]
            return f"weights have other keys: missing {missing}, unexpected {unexpected}"
        wrong = [(k, s, d) for (k, s, d), ref in zip(mine, reference) if (k, s, d) != ref]
        key, shape, dtype = wrong[0] if wrong else mine[0]
        expected = dict((k, (s, d)) for k, s, d in reference)[key]
        return f"weights {key!r} are {dtype} {shape}, expected {expected[1]} {expected[0]}"
    for key, array in record.items():
        values = array.numpy()
        if np.issubdtype(values.dtype, np.floating) and not (np.abs(values) <= MAX_ABS_WEIGHT).all():
            return f"weights {key!r} hold NaN, Inf or values beyond {MAX_ABS_WEIGHT:g}"
    return None


class PerArchitectureFedAvg(FederatedStrategy):
    """FedAvg within each architecture group (see module docstring).

    In round 1 no global model exists yet: clients start from their architecture's seeded
    initialisation, which is the same on every client, so the first average is well defined.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.global_models: dict[str, ArrayRecord] = {}

    def _with_global(self, content: RecordDict, node_id: int) -> RecordDict:
        arch = self.clients.get(node_id, {}).get(P.ARCHITECTURE)
        if arch in self.global_models:
            content[P.ARRAYS] = self.global_models[str(arch)]
        return content

    def train_content(self, server_round: int, node_id: int) -> RecordDict:
        content = RecordDict({P.CONFIG: ConfigRecord({P.SERVER_ROUND: server_round, P.RETURN_ARRAYS: True})})
        return self._with_global(content, node_id)

    def evaluate_content(self, server_round: int, node_id: int) -> RecordDict:
        return self._with_global(super().evaluate_content(server_round, node_id), node_id)

    def check_train_reply(self, reply) -> str | None:
        reason = super().check_train_reply(reply)
        if reason is None and P.ARRAYS not in reply.content.array_records:
            reason = f"missing ArrayRecord {P.ARRAYS!r} with the trained weights"
        if reason is None and reply.content.metric_records[P.METRICS][P.NUM_EXAMPLES] < 1:
            reason = f"{P.NUM_EXAMPLES} is 0: an upload trained on nothing has no weight in the mean"
        return reason

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "global_models": {a: r.to_torch_state_dict() for a, r in self.global_models.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.global_models = {a: ArrayRecord(sd) for a, sd in state["global_models"].items()}

    def screen_train(self, server_round: int, outcome: PhaseOutcome) -> dict[int, str]:
        """Uploads that cannot enter their architecture's mean (module docstring)."""
        by_arch: dict[str, dict[int, ArrayRecord]] = defaultdict(dict)
        for node, reply in sorted(outcome.ok.items()):
            by_arch[str(self.clients[node][P.ARCHITECTURE])][node] = reply.content[P.ARRAYS]
        reasons = {}
        for arch, uploads in by_arch.items():
            reference = self.reference_signature(arch, uploads)
            for node, upload in uploads.items():
                reason = (
                    check_upload(upload, reference)
                    if reference is not None
                    else "the group's uploads disagree on keys, shapes or dtypes and there is no global model yet"
                )
                if reason is not None:
                    reasons[node] = f"weights left out of the {arch} mean: {reason}"
        return reasons

    def reference_signature(self, arch: str, uploads: dict[int, ArrayRecord]) -> Signature | None:
        """What an upload of `arch` must look like: the global model's signature, or in round 1 the
        one more than half of the group sent (None without such a majority: two clients that
        disagree cannot both be right, and the server cannot tell which is)."""
        if arch in self.global_models:
            return signature(self.global_models[arch])
        (common, count), *_ = Counter(signature(r) for r in uploads.values()).most_common(1)
        return common if count > len(uploads) / 2 else None

    def after_train(self, server_round: int, outcome: PhaseOutcome) -> None:
        groups: dict[str, list[RecordDict]] = defaultdict(list)
        for node, reply in outcome.ok.items():
            arch = str(self.clients[node][P.ARCHITECTURE])
            groups[arch].append(RecordDict({P.ARRAYS: reply.content[P.ARRAYS], P.METRICS: reply.content[P.METRICS]}))
        for arch, records in groups.items():
            mean = aggregate_arrayrecords(records, P.NUM_EXAMPLES)
            self.global_models[arch] = in_dtypes_of(mean, records[0][P.ARRAYS])


def in_dtypes_of(mean: ArrayRecord, upload: ArrayRecord) -> ArrayRecord:
    """The mean in the uploads' dtypes: Flower's weighted mean turns integer buffers (BatchNorm's
    `num_batches_tracked`) into float64, and the architecture's model would no longer be the one
    its clients upload (nor pass `check_upload` next round); counters are rounded back."""
    out = {}
    for key, array in mean.items():
        values, dtype = array.numpy(), np.dtype(upload[key].dtype)
        out[key] = Array(np.asarray(np.rint(values) if np.issubdtype(dtype, np.integer) else values).astype(dtype))
    return ArrayRecord(out)
