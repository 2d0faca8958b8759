"""`fedavg`: parameter averaging among the clients that share an architecture.

Heterogeneous clients cannot average with each other, so each architecture forms its own
FedAvg group: the server keeps one global model per architecture, sends it with every train and
evaluate message to that architecture's clients, and replaces it by the example-weighted mean
of their trained weights.
"""

from __future__ import annotations

from collections import defaultdict

from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.base import FederatedStrategy
from fedmmkt_strategy.replies import PhaseOutcome


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
        return reason

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "global_models": {a: r.to_torch_state_dict() for a, r in self.global_models.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.global_models = {a: ArrayRecord(sd) for a, sd in state["global_models"].items()}

    def after_train(self, server_round: int, outcome: PhaseOutcome) -> None:
        groups: dict[str, list[RecordDict]] = defaultdict(list)
        for node, reply in outcome.ok.items():
            arch = str(self.clients[node][P.ARCHITECTURE])
            groups[arch].append(RecordDict({P.ARRAYS: reply.content[P.ARRAYS], P.METRICS: reply.content[P.METRICS]}))
        for arch, records in groups.items():
            self.global_models[arch] = aggregate_arrayrecords(records, P.NUM_EXAMPLES)
