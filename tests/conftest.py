"""Shared fixtures: tiny run configs and one micro pre-trained server-model cache per session."""

from __future__ import annotations

import pytest

#: Run-config keys that make the server's models and rounds tiny: a plumbing check, not quality.
MICRO_SERVER = {
    "pretrain-judge-epochs": 1,
    "pretrain-vae-steps": 10,
    "pretrain-t2i-steps": 10,
    "pretrain-captioner-steps": 10,
    "pretrain-eval-per-class": 1,
    "synthetic-size": 48,
    "sampling-steps": 2,
    "t2i-eval-per-class": 1,
    "t2i-final-eval-per-class": 1,
    "t2i-steps-per-round": 2,
    "fusion-steps": 3,
    "client-warmup-epochs": 2,
}
TINY_FEDERATION = {
    "client-layout": "image:cnn,text:bow,image:cnn-small,text:gru",
    "pool-size": 480,
    "test-per-class": 2,
    "local-epochs": 1,
    "node-settle": 0.0,
    "num-server-rounds": 2,
}


@pytest.fixture(scope="session")
def micro_cache(tmp_path_factory) -> str:
    """A cache folder shared by every test that builds the micro server models."""
    return str(tmp_path_factory.mktemp("fedmmkt-cache"))


@pytest.fixture(scope="session")
def micro_run_config(micro_cache) -> dict:
    return {**TINY_FEDERATION, **MICRO_SERVER, "cache-dir": micro_cache}
