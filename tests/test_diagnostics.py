"""Steps return `Diagnostics`; the strategy records a phase's once (`RunRecorder.record`)."""

from __future__ import annotations

from fedmmkt_strategy.reporting.results import Diagnostics, RunRecorder


def test_merge_keeps_every_figure_and_later_values_win():
    first = Diagnostics({"kept": 3, "discard_rate": 0.5}).client(7, reliability=0.9)
    second = Diagnostics({"discard_rate": 0.25}).client(7, alpha_mean=0.4).client(8, alpha_mean=0.6)
    merged = first.merge(second, Diagnostics())
    assert merged.server == {"kept": 3, "discard_rate": 0.25}
    assert merged.clients == {7: {"reliability": 0.9, "alpha_mean": 0.4}, 8: {"alpha_mean": 0.6}}


def test_record_writes_clients_and_server_of_each_diagnostics_into_the_round(tmp_path):
    recorder = RunRecorder(tmp_path, {}, "fedmmkt")
    recorder.client(2, 7, bytes_up=10)
    recorder.record(2, Diagnostics({"gen_acc": 0.5}).client(7, dp_epsilon=1.5), Diagnostics({"time_fusion_s": 0.1}))
    recorder.record(0, Diagnostics({"gen_acc": 0.4}))
    assert recorder.rounds[2] == {"gen_acc": 0.5, "time_fusion_s": 0.1} and recorder.rounds[0] == {"gen_acc": 0.4}
    assert recorder.clients[(2, 7)] == {"round": 2, "node_id": 7, "bytes_up": 10, "dp_epsilon": 1.5}
