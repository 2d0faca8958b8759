"""The ServerApp: hands Flower's Grid and the run config to `run_federation`. No algorithm lives here."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmmkt_strategy.runs.runner import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured strategy; the results folder is named in the log."""
    run_federation(grid, context.run_config)
