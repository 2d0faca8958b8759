"""One federated run on any Grid: validate the config, build the strategy, run, write results.

The ServerApp calls this with Flower's Grid; the in-process runner (`inprocess.py`, used by
`fedmmkt compare` and the tests) calls it with a Grid that delivers messages in the same process.
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.factory import build_strategy
from fedmmkt_strategy.results import RunRecorder, make_run_dir
from fedmmkt_strategy.server_models import ServerModels
from fedmmkt_strategy.timeouts import PhaseTimeoutGrid, phase_timeouts


def run_federation(grid: Grid, run_config: Mapping[str, Any], models: ServerModels | None = None) -> Path:
    """Run `num-server-rounds` rounds of the configured strategy; return the results folder."""
    config = RunConfig.from_run_config(run_config)  # a bad value stops here, before any work
    run_dir = make_run_dir(config.results_path, config.strategy, config.run_name)
    recorder = RunRecorder(run_dir, config.as_run_config(), config.strategy)
    log(INFO, "results will be written to %s", run_dir)
    strategy = build_strategy(config, recorder, models)
    try:
        strategy.start(
            grid=PhaseTimeoutGrid(grid, phase_timeouts(config)),
            initial_arrays=ArrayRecord(),
            num_rounds=config.num_server_rounds,
            timeout=config.round_timeout,
        )
    finally:
        recorder.write()
    log(INFO, "results: %s (metrics.json, metrics.csv, accuracy.png, samples/)", run_dir)
    return run_dir
