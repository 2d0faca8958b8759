"""Shared fixtures: tiny run configs and one micro pre-trained server-model cache per session."""

from __future__ import annotations

import pytest

from fedmmkt_strategy.config import load_preset

#: Run-config keys that make the server's models and rounds tiny: a plumbing check, not quality.
MICRO_SERVER = load_preset("micro-server")
#: Four roles (both modalities, the cheapest models), small pools, two rounds.
TINY_FEDERATION = load_preset("micro-federation")
#: The in-process app tests' federation: the same, with two `cnn` image clients (FedAvg averages
#: clients of one architecture) and a two-epoch warm-up.
INPROCESS_FEDERATION = {
    **TINY_FEDERATION,
    "client-layout": "image:cnn,text:bow,image:cnn,text:gru",
    "client-warmup-epochs": 2,
}


@pytest.fixture(scope="session")
def micro_cache(tmp_path_factory) -> str:
    """A cache folder shared by every test that builds the micro server models."""
    return str(tmp_path_factory.mktemp("fedmmkt-cache"))


@pytest.fixture(scope="session")
def micro_run_config(micro_cache) -> dict:
    return {**TINY_FEDERATION, **MICRO_SERVER, "cache-dir": micro_cache}
