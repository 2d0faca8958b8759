"""One federated run on any Grid: validate the config, build the strategy, run, write results.

The ServerApp calls this with Flower's Grid; the in-process runner (`inprocess.py`, used by
`fedmmkt compare` and the tests) calls it with a Grid that delivers messages in the same process.
With the run-config key `resume`, the run continues a previous one from its checkpoint
(`checkpoint.py`) in the same results folder.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedmmkt_strategy.config import ConfigError, RunConfig
from fedmmkt_strategy.federation.checkpoint import (
    CHECKPOINT_FILE,
    RESUME_ADVICE,
    check_resumable,
    load_checkpoint,
    resolve_resume,
    restore_rng,
)
from fedmmkt_strategy.federation.timeouts import PhaseTimeoutGrid, phase_timeouts
from fedmmkt_strategy.generative.server_models import ServerModels
from fedmmkt_strategy.reporting.report import write_report
from fedmmkt_strategy.reporting.results import RunRecorder, make_run_dir
from fedmmkt_strategy.reporting.trackers import TrackerFeed, build_trackers
from fedmmkt_strategy.strategies.base import FederatedStrategy
from fedmmkt_strategy.strategies.factory import build_strategy, effective_config


def use_server_threads(threads: int) -> None:
    """The server's torch threads, set where the run starts: `server-threads`, or with 0 what the
    process has (torch's default: every core, or OMP_NUM_THREADS). Nothing pins threads at import
    any more (the ClientApp pins per message, `client_app.app.pin_threads`), so the synthesis, the
    T2I update and a first pre-training inside `flwr run` get every core."""
    if threads:
        torch.set_num_threads(threads)
    log(INFO, "server: %d torch threads", torch.get_num_threads())


def run_federation(grid: Grid, run_config: Mapping[str, Any], models: ServerModels | None = None) -> Path:
    """Run `num-server-rounds` rounds of the configured strategy; return the results folder.

    A fresh run and a resumed one differ only in how the recorder and the strategy are set up
    (`start_fresh`, `start_resumed`); both then go through the same round loop, `run_rounds`, on
    the same per-phase timeout grid."""
    config = effective_config(RunConfig.from_run_config(run_config))  # a bad value stops here, before any work
    config.check_server_packages()
    use_server_threads(config.server_threads)
    log(
        INFO,
        "FedMMKT on Flower: strategy %s, %d rounds, %d client roles (%s), %s world",
        config.strategy,
        config.num_server_rounds,
        len(config.layout),
        config.client_layout,
        config.dataset,
    )
    recorder, strategy, first = (start_resumed if config.resume else start_fresh)(config, models)
    try:
        timed = PhaseTimeoutGrid(grid, phase_timeouts(config))
        run_rounds(strategy, timed, first, config.num_server_rounds, config.round_timeout)
    finally:
        recorder.close()
    log(INFO, "results: %s (metrics.json, metrics.csv, accuracy.png, samples/, tensorboard/)", recorder.run_dir)
    write_run_report(recorder.run_dir)
    return recorder.run_dir


def start_fresh(config: RunConfig, models: ServerModels | None) -> tuple[RunRecorder, FederatedStrategy, int]:
    """A new results folder, its recorder and trackers, and the strategy; the run starts at round 1."""
    run_dir = make_run_dir(config.results_path, config.strategy, config.run_name)
    recorder = RunRecorder(run_dir, config.as_run_config(), config.strategy)
    log(INFO, "results will be written to %s", run_dir)
    recorder.feed = TrackerFeed(build_trackers(config.tracker_names, run_dir, recorder.config), run_dir)
    return recorder, build_strategy(config, recorder, models), 1


def start_resumed(config: RunConfig, models: ServerModels | None) -> tuple[RunRecorder, FederatedStrategy, int]:
    """The run named by `resume`, restored from its checkpoint; it continues after its last
    complete round, in its results folder.

    The server's state (models, pool, history, metrics, random states) is restored exactly; the
    config may differ only in keys that do not change results (`checkpoint.RESUMABLE_KEYS`).
    """
    run_dir = resolve_resume(config)
    state = load_checkpoint(run_dir / CHECKPOINT_FILE)
    completed = int(state["round"])
    check_resumable(state["config"], config, completed)
    recorder = RunRecorder(run_dir, config.as_run_config(), config.strategy)
    try:
        recorder.load_state_dict(state["recorder"])
    except _STATE_ERRORS as err:
        raise _damaged(run_dir, config, err) from None
    recorder.resumes.append({"after_round": completed, "at": time.strftime("%Y-%m-%d %H:%M:%S")})
    trackers = build_trackers(config.tracker_names, run_dir, recorder.config, resumed_after=completed)
    recorder.feed = TrackerFeed(trackers, run_dir)
    recorder.feed.mark_sent(recorder.as_dict())
    strategy = build_strategy(config, recorder, models)
    try:
        strategy.load_state_dict(state["strategy"])
        restore_rng(state["rng"])  # last: building the strategy may have drawn random numbers
    except _STATE_ERRORS as err:
        raise _damaged(run_dir, config, err) from None
    log(INFO, "resuming %s after round %d of %d", run_dir, completed, config.num_server_rounds)
    return recorder, strategy, completed + 1


def write_run_report(run_dir: Path) -> None:
    """Write the run's report.html and log its path; the results are already on disk, so a report
    that cannot be written costs a warning (`fedmmkt report` can retry), never the run."""
    try:
        log(INFO, "report: %s", write_report(run_dir))
    except Exception as err:  # any failure: the run itself has succeeded
        log(WARNING, "report: not written (%s: %s); retry with: fedmmkt report %s", type(err).__name__, err, run_dir)


#: What restoring a checkpoint of the wrong structure raises (a missing key, a wrong type or shape).
_STATE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError)


def _damaged(run_dir: Path, config: RunConfig, err: Exception) -> ConfigError:
    """One line for a checkpoint that loads but does not hold a run's state: which file, what is
    wrong, what to do (nothing has been written yet: the folder is as it was)."""
    return ConfigError(
        f"resume: {run_dir / CHECKPOINT_FILE} does not hold the state of a {config.strategy} run "
        f"({type(err).__name__}: {err}); {RESUME_ADVICE}"
    )


def run_rounds(strategy: FederatedStrategy, grid: Grid, first: int, last: int, timeout: float) -> None:
    """Rounds `first`..`last` in the order of Flower's `Strategy.start` (train phase, then
    evaluate phase). Not `start` itself: it always begins at round 1, so it cannot continue a
    resumed run, and one loop for both keeps their behaviour (timeouts, logging) the same."""
    strategy.summary()
    started = time.time()
    arrays = ArrayRecord()
    for server_round in range(first, last + 1):
        log(INFO, "")
        log(INFO, "[ROUND %s/%s]", server_round, last)
        messages = strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
        replies = grid.send_and_receive(messages, timeout=timeout)
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        arrays = new_arrays if new_arrays is not None else arrays
        if train_metrics is not None:
            log(INFO, "\t└──> Aggregated MetricRecord: %s", train_metrics)
        messages = strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid)
        evaluate_metrics = strategy.aggregate_evaluate(server_round, grid.send_and_receive(messages, timeout=timeout))
        if evaluate_metrics is not None:
            log(INFO, "\t└──> Aggregated MetricRecord: %s", evaluate_metrics)
    log(INFO, "")
    log(INFO, "Strategy execution finished in %.2fs (rounds %d-%d)", time.time() - started, first, last)
