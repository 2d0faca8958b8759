"""`self-ft`: the server fine-tunes its T2I model on its own generations with prompt labels."""

from __future__ import annotations

from fedmmkt_strategy.reporting.results import Diagnostics
from fedmmkt_strategy.strategies.fedmmkt import FedMMKT


class SelfFineTuning(FedMMKT):
    """The reference for FedMMKT's T2I gain: the denoiser is fine-tuned on (own image, prompt
    class) pairs with the same budget as FedMMKT, with no client knowledge. Clients train on
    private data only (nothing is sent to them), so their accuracy is `local`'s."""

    send_soft_labels = send_fused = False
    t2i_labels = "prompt"
    fixed_config = {"use-t2i-update": True}

    def prepare_round(self, server_round, grid) -> None:
        self._timings = {}
        with self._timed("synthesis"):
            self.pool = self.synthesize(server_round)
        with self._timed("t2i_update"):
            t2i_diag = self.update_t2i(server_round, vote=None)
        self.targets = {}
        self.recorder.record(server_round, t2i_diag, Diagnostics(self._timings))
