"""`creamfl`: CreamFL-style contrastive representation aggregation and representation
distillation only."""

from __future__ import annotations

from fedmmkt_strategy.fedmmkt import FedMMKT


class CreamFL(FedMMKT):
    """Contrastive aggregation of client representations within each modality, distilled back as
    representation targets. No vote (every sample is used), no cross-attention, no soft labels,
    no T2I update."""

    send_soft_labels = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.use_vote = self.use_cross_attention = self.use_t2i_update = False
        self.prompt_mix = 0.0
        self.use_contrastive = True
