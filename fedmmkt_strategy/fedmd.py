"""`fedmd`: clients distil the plain average of all clients' probabilities on the synthetic set."""

from __future__ import annotations

from fedmmkt_strategy.fedmmkt import FedMMKT


class FedMD(FedMMKT):
    """FedMD on the server's synthetic set: no entropy vote (nothing is discarded), no fusion,
    no T2I update; clients distil the consensus probabilities only."""

    send_fused = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.use_vote = self.use_contrastive = self.use_cross_attention = self.use_t2i_update = False
        self.prompt_mix = 0.0  # FedMD's consensus is the clients' alone
