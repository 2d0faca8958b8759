"""`creamfl`: CreamFL-style contrastive representation aggregation and representation
distillation only."""

from __future__ import annotations

from fedmmkt_strategy.strategies.fedmmkt import FedMMKT


class CreamFL(FedMMKT):
    """Contrastive aggregation of client representations within each modality, distilled back as
    representation targets. No vote (every sample is used), no cross-attention, no soft labels,
    no T2I update."""

    send_soft_labels = False
    fixed_config = {
        "use-labvote": False,
        "use-cross-attention": False,
        "use-t2i-update": False,
        "labvote-prompt-mix": 0.0,
        "use-contrastive-aggregation": True,
    }
