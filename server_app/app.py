"""The ServerApp: validates the run config, builds the chosen strategy, runs it, and says
where the results are. No algorithm lives here."""

from __future__ import annotations

from logging import INFO

from flwr.app import ArrayRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.factory import build_strategy
from fedmmkt_strategy.results import RunRecorder, make_run_dir

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run `num-server-rounds` rounds of the configured strategy and write the results folder."""
    config = RunConfig.from_run_config(context.run_config)  # a bad value stops here, before any work
    run_dir = make_run_dir(config.results_path, config.strategy, config.run_name)
    recorder = RunRecorder(run_dir, config.as_run_config(), config.strategy)
    log(INFO, "results will be written to %s", run_dir)
    strategy = build_strategy(config, recorder)
    try:
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(),
            num_rounds=config.num_server_rounds,
            timeout=config.round_timeout,
        )
    finally:
        recorder.write()
    log(INFO, "results: %s (metrics.json, metrics.csv, accuracy.png)", run_dir)
