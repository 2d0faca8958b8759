"""`fedmd`: clients distil the plain average of all clients' probabilities on the synthetic set."""

from __future__ import annotations

from fedmmkt_strategy.strategies.fedmmkt import FedMMKT


class FedMD(FedMMKT):
    """FedMD on the server's synthetic set: no entropy vote (nothing is discarded), no fusion,
    no T2I update; clients distil the consensus probabilities only."""

    send_fused = False
    #: FedMD's consensus is the clients' plain average alone (applied to the config: factory.py)
    fixed_config = {
        "use-labvote": False,
        "use-contrastive-aggregation": False,
        "use-cross-attention": False,
        "use-t2i-update": False,
        "labvote-prompt-mix": 0.0,
    }
