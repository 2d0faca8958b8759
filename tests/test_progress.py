"""Progress of long loops (fedmmkt_strategy/reporting/progress.py) and its use by `fedmmkt compare`: the
estimate of what is left, the log lines where no terminal shows a bar, the bar on a terminal, and
one progress step plus one headline line per run of a comparison. CPU only, well under a second."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from pathlib import Path

import pytest

from fedmmkt_strategy.cli import compare as cmp
from fedmmkt_strategy.reporting import progress
from fedmmkt_strategy.reporting.progress import (
    Progress,
    format_seconds,
    progress_line,
    remaining_by_kind,
    remaining_seconds,
    track,
)


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]


# ------------------------------------------------------------------ the estimate
def test_remaining_is_the_mean_time_per_finished_unit_times_the_units_left():
    assert remaining_seconds(elapsed=10.0, done=2, total=5) == pytest.approx(15.0)
    assert remaining_seconds(elapsed=10.0, done=5, total=5) == 0.0
    assert remaining_seconds(elapsed=3.0, done=0, total=5) is None


def test_remaining_by_kind_prices_each_pending_unit_by_its_kind_or_by_the_overall_mean():
    finished = [("local", 2.0), ("fedmmkt", 10.0), ("local", 4.0)]
    # local: mean 3; fedmmkt: 10; fedavg has not run yet: the mean of all finished, 16 / 3
    assert remaining_by_kind(finished, ["local", "fedmmkt", "fedavg"]) == pytest.approx(3 + 10 + 16 / 3)
    assert remaining_by_kind(finished, []) == 0.0
    assert remaining_by_kind([], ["local"]) is None


def test_durations_read_as_tqdm_writes_them():
    assert format_seconds(None) == "?"
    assert format_seconds(75) == "01:15"
    assert format_seconds(3725) == "1:02:05"


def test_a_log_line_names_the_loop_its_units_the_elapsed_time_and_what_is_left():
    line = progress_line("judge", 24, 60, "epoch", 12.0, 18.0)
    assert line == "judge: 24/60 epoch (40 %), 00:12 elapsed, ~00:18 left"
    assert progress_line("judge", 0, 60, "epoch", 1.0, None) == "judge: 0/60 epoch (0 %), 00:01 elapsed, ~? left"
    assert progress_line("judge", 60, 60, "epoch", 30.0, 0.0) == "judge: 60/60 epoch (100 %) in 00:30"


# ------------------------------------------------------------------ log lines (no terminal)
def test_without_a_terminal_a_loop_logs_at_most_one_line_every_so_often_and_one_at_the_end(caplog):
    clock = FakeClock()
    with caplog.at_level(logging.INFO), Progress("vae", 4, every=30, terminal=False, clock=clock) as bar:
        for step_seconds in (10, 21, 9):  # ends of steps 1-3 at 10, 31 and 40 s
            clock.now += step_seconds
            bar.advance()
        clock.now += 30  # step 4 ends at 70 s
        bar.advance()
    assert _lines(caplog, "vae:") == [
        "vae: 2/4 step (50 %), 00:31 elapsed, ~00:31 left",
        "vae: 4/4 step (100 %) in 01:10",
    ]


def test_a_loop_shorter_than_the_interval_or_disabled_logs_nothing(caplog):
    clock = FakeClock()
    with caplog.at_level(logging.INFO):
        for enabled, seconds in ((True, 5.0), (False, 100.0)):
            with Progress("generate", 2, "batch", enabled=enabled, terminal=False, clock=clock) as bar:
                clock.now += seconds
                bar.advance(2)
    assert _lines(caplog, "generate:") == []


def test_a_loop_of_runs_logs_a_line_per_run_with_the_estimate_by_kind(caplog):
    clock = FakeClock()
    kinds = ["local", "fedmmkt", "local", "fedmmkt"]
    with caplog.at_level(logging.INFO):
        with Progress("compare", 4, "run", every=0, kinds=kinds, terminal=False, clock=clock) as bar:
            for seconds in (10, 290, 12):
                clock.now += seconds
                bar.advance()
            clock.now += 300
            bar.advance()
    assert _lines(caplog, "compare:") == [
        "compare: 1/4 run (25 %), 00:10 elapsed, ~00:30 left",  # nothing else known: 3 more like the first
        "compare: 2/4 run (50 %), 05:00 elapsed, ~05:00 left",  # one local (10 s), one fedmmkt (290 s)
        "compare: 3/4 run (75 %), 05:12 elapsed, ~04:50 left",
        "compare: 4/4 run (100 %) in 10:12",
    ]


def test_a_loop_that_fails_logs_no_end_line(caplog):
    clock = FakeClock()
    with caplog.at_level(logging.INFO), pytest.raises(RuntimeError):
        with Progress("t2i", 3, every=0, terminal=False, clock=clock):
            clock.now += 50
            raise RuntimeError("interrupted")
    assert _lines(caplog, "t2i:") == []


def test_kinds_must_name_every_unit():
    with pytest.raises(ValueError, match="2 kinds for 3 units"):
        Progress("compare", 3, "run", kinds=["a", "b"])


def test_track_yields_every_item_and_takes_the_total_of_an_iterator(caplog, monkeypatch):
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    with caplog.at_level(logging.INFO):
        assert list(track(range(3), "judge", "epoch", every=0)) == [0, 1, 2]
        assert list(track(iter("ab"), "caption", "batch", total=2, every=0)) == ["a", "b"]
    judge = [line.split(" (")[0] for line in _lines(caplog, "judge:")]
    assert judge == ["judge: 1/3 epoch", "judge: 2/3 epoch", "judge: 3/3 epoch"]
    assert _lines(caplog, "caption: 2/2 batch (100 %) in")


# ------------------------------------------------------------------ the bar (a terminal)
def test_on_a_terminal_a_bar_shows_elapsed_and_left_and_log_lines_go_above_it(capsys):
    console = logging.StreamHandler(sys.stderr)  # stderr is capsys' capture now, as a console is
    logger = logging.getLogger("tests.progress")
    logger.addHandler(console)
    logger.propagate = False
    root = logging.getLogger()
    root.addHandler(console)
    try:
        with Progress("compare", 3, "run", every=0, terminal=True) as bar:
            assert console not in root.handlers  # swapped for one that writes above the bars
            bar.advance()
            root.warning("a line while the bar is open")
            bar.advance(2)
        assert console in root.handlers  # and restored
    finally:
        root.removeHandler(console)
    err = capsys.readouterr().err
    assert re.search(r"compare:\s+33%\|.*\| 1/3 run \[00:00 elapsed, ~00:00 left\]", err)
    assert re.search(r"compare: 100%\|.*\| 3/3 run \[00:00 elapsed\]", err)
    assert "a line while the bar is open\n" in err


# ------------------------------------------------------------------ fedmmkt compare
def test_a_run_headline_has_its_figures_and_a_dash_for_those_it_lacks():
    summary = {"image_acc": 0.41234, "text_acc": math.nan, "gen_acc": 0.5, "wall_s": 312.4}
    assert cmp.headline("local", 2, summary) == (
        "local, seed 2: image acc 0.412, text acc -, GenAcc 0.500, FID -, wall s 312"
    )


def _fake_run(results: list[str]):
    """A stand-in for `run_inprocess` that writes the metrics.json of a two-round run at once."""

    def run(run_config: dict, num_nodes: int, models=None) -> Path:
        run_dir = Path(run_config["results-dir"]) / run_config["run-name"]
        run_dir.mkdir(parents=True)
        summary = {"image_acc_global_mean": 0.5, "text_acc_global_mean": 0.25}
        rounds = [{"round": r, "summary": summary, "server": {}, "clients": []} for r in (1, 2)]
        (run_dir / "metrics.json").write_text(json.dumps({"rounds": rounds, "wall_time_s": 1.5}))
        results.append(run_config["run-name"])
        return run_dir

    return run


def test_compare_reports_one_progress_step_and_one_headline_per_run(tmp_path, monkeypatch, caplog):
    ran: list[str] = []
    monkeypatch.setattr(cmp, "run_inprocess", _fake_run(ran))
    monkeypatch.setattr(cmp, "load_server_models", lambda config: None)
    monkeypatch.setattr(cmp, "write_outputs", lambda results, out_dir, header: None)
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    preset = cmp.Preset(["local", "fedavg"], [0, 1], num_nodes=4)
    with caplog.at_level(logging.INFO):
        results = cmp.compare(preset, tmp_path, {})
    assert ran == ["local-seed0", "fedavg-seed0", "local-seed1", "fedavg-seed1"]
    assert {v: len(runs) for v, runs in results.items()} == {"local": 2, "fedavg": 2}
    steps = [line for line in _lines(caplog, "compare: ") if re.match(r"compare: \d/4 run", line)]
    assert [s.split(" (")[0] for s in steps] == [f"compare: {n}/4 run" for n in (1, 2, 3, 4)]
    assert steps[-1].startswith("compare: 4/4 run (100 %) in ")
    assert _lines(caplog, "compare: fedavg, seed 1:") == [
        "compare: fedavg, seed 1: image acc 0.500, text acc 0.250, GenAcc -, FID -, wall s 2"
    ]
