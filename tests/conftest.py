"""Shared fixtures: tiny run configs and one micro pre-trained server-model cache per session."""

from __future__ import annotations

import pytest

from fedmmkt_strategy.config import load_preset

#: Run-config keys that make the server's models and rounds tiny: a plumbing check, not quality.
MICRO_SERVER = load_preset("micro-server")
#: Four roles (both modalities, the cheapest models), small pools, two rounds.
TINY_FEDERATION = load_preset("micro-federation")


@pytest.fixture(scope="session")
def micro_cache(tmp_path_factory) -> str:
    """A cache folder shared by every test that builds the micro server models."""
    return str(tmp_path_factory.mktemp("fedmmkt-cache"))


@pytest.fixture(scope="session")
def micro_run_config(micro_cache) -> dict:
    return {**TINY_FEDERATION, **MICRO_SERVER, "cache-dir": micro_cache}
