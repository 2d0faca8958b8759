"""The algorithm's steps as pure functions on arrays: LabVote (`labvote`), its Byzantine-robust
variants (`robust`), contrastive aggregation and inter-modal fusion (`fusion`), the uplink's
differential privacy (`privacy`) and the secure-aggregation masks (`secagg`).

Nothing here knows about Flower messages or rounds; `federation/` and `strategies/` call these."""
