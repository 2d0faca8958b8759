"""What every strategy of this project shares: sampling, the train/evaluate phases, reply
checks, byte accounting and results on disk.

Concrete strategies (`local`, `fedavg`, and the knowledge-transfer ones) are small siblings
that override the hooks `prepare_round`, `train_content`, `evaluate_content` and `after_train`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.federation.accounting import payload_bytes
from fedmmkt_strategy.federation.checkpoint import rng_state, save_checkpoint
from fedmmkt_strategy.federation.replies import PhaseOutcome, collect_replies, failed_nodes, require_quorum
from fedmmkt_strategy.federation.sampling import NodeSampler
from fedmmkt_strategy.federation.validation import check_metrics_reply
from fedmmkt_strategy.reporting.results import RunRecorder


class FederatedStrategy(Strategy):
    """Base of all strategies here: one round is (prepare) -> train.distill -> evaluate.

    Parameters
    ----------
    config : RunConfig
        The validated run configuration (sampling, quorum and client knobs).
    recorder : RunRecorder
        Where per-client and per-round metrics go; files are rewritten every round.
    """

    #: Run-config keys the strategy fixes whatever the run says (a baseline switching FedMMKT's
    #: steps off); `factory.effective_config` writes them into the config, so metrics.json and
    #: the log record what actually ran.
    fixed_config: dict[str, object] = {}
    train_metrics: tuple[str, ...] = (P.TRAIN_LOSS, P.NUM_EXAMPLES)
    evaluate_metrics: tuple[str, ...] = (P.ACC_LOCAL, P.ACC_GLOBAL, P.NUM_EXAMPLES)

    def __init__(self, config: RunConfig, recorder: RunRecorder):
        self.config = config
        self.recorder = recorder
        self.sampler = NodeSampler(
            min_nodes=config.min_nodes,
            fraction=config.sample_fraction,
            deadline=config.sample_deadline,
            settle=config.node_settle,
            seed=config.seed,
        )
        self.nodes: list[int] = []
        self.clients: dict[int, dict[str, str | int]] = {}  # node id -> what it told us it runs
        self._sent: dict[str, list[Message]] = {}
        self._world_header: dict[str, int | str | list[str]] | None = None
        #: with the results folder's name, the run key: unique even where folder names repeat
        #: (a test's "whole" in another temporary folder), so a fresh run never loads another's state
        self.run_token = secrets.token_hex(6)

    # ------------------------------------------------------------------ hooks
    def prepare_round(self, server_round: int, grid: Grid) -> None:
        """Work before training (e.g. synthesis and the inference sub-round); none by default."""

    def train_content(self, server_round: int, node_id: int) -> RecordDict:
        """Records of the train.distill message to one node."""
        return RecordDict({P.CONFIG: ConfigRecord({P.SERVER_ROUND: server_round, P.RETURN_ARRAYS: False})})

    def evaluate_content(self, server_round: int, node_id: int) -> RecordDict:
        """Records of the evaluate message to one node."""
        return RecordDict({P.CONFIG: ConfigRecord({P.SERVER_ROUND: server_round})})

    def screen_train(self, server_round: int, outcome: PhaseOutcome) -> dict[int, str]:
        """Node -> reason, for train replies that pass one by one but not next to the others (e.g.
        weights of another shape than the group's); none by default."""
        return {}

    def after_train(self, server_round: int, outcome: PhaseOutcome) -> None:
        """Use the accepted train replies (e.g. average weights); nothing by default."""

    def after_evaluate(self, server_round: int) -> None:
        """Server-side evaluation after the clients reported (e.g. T2I quality); none by default."""

    def state_dict(self) -> dict:
        """What this strategy must remember across rounds, for a checkpoint; extended by subclasses."""
        return {"clients": {node: dict(info) for node, info in self.clients.items()}, "run_token": self.run_token}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` when a run resumes."""
        self.clients = {int(node): dict(info) for node, info in state["clients"].items()}
        # the resumed run keeps its run key, so clients find the state they saved before the crash
        # (a checkpoint from before run keys existed keeps the fresh token: clients start over)
        self.run_token = str(state.get("run_token", self.run_token))
        self._world_header = None

    def save_checkpoint(self, server_round: int) -> None:
        """The server's whole state after a complete round, atomically into the results folder."""
        state = {
            "round": server_round,
            "config": self.config.as_run_config(),
            "rng": rng_state(),
            "recorder": self.recorder.state_dict(),
            "strategy": self.state_dict(),
        }
        save_checkpoint(self.recorder.run_dir, state)

    def check_train_reply(self, reply: Message) -> str | None:
        return check_metrics_reply(reply, self.train_metrics)

    # ------------------------------------------------------------------ messaging
    def send(self, phase: str, message_type: str, server_round: int, contents: dict[int, RecordDict]) -> list[Message]:
        """Build one message per node, count downlink bytes, and remember them for reply matching.

        Every message carries the world's class count and names and the run key in its config
        (`world_header`): a client written from docs/protocol.md learns C from the first message it
        gets, whatever the strategy, and a restarted client finds its saved state by the run key."""
        messages = []
        header = self.world_header()
        for node, content in contents.items():
            if P.CONFIG in content.config_records:
                content.config_records[P.CONFIG].update(header)
            else:
                content[P.CONFIG] = ConfigRecord(header)
            self.recorder.client(server_round, node, bytes_down=payload_bytes(content))
            messages.append(Message(content, dst_node_id=node, message_type=message_type, group_id=str(server_round)))
        self._sent[phase] = messages
        return messages

    def world_header(self) -> dict[str, int | str | list[str]]:
        """`num-classes` and `class-names` of the run's world (built once; a few hundred bytes), and
        the `run-key` under which clients keep their state across restarts (the results folder's
        name, which a resumed run keeps)."""
        if self._world_header is None:
            names = list(self.config.world().class_names)
            self._world_header = {
                P.NUM_CLASSES: len(names),
                P.CLASS_NAMES: names,
                P.RUN_KEY: f"{self.recorder.run_dir.name}-{self.run_token}",
            }
        return self._world_header

    def receive(self, phase: str, server_round: int, replies: Iterable[Message], check) -> PhaseOutcome:
        """Match, check and account the replies of a phase; fail below the quorum."""
        outcome = collect_replies(phase, self._sent.pop(phase, []), replies, check)
        for node, reason in outcome.failed.items():
            self.recorder.failure(server_round, phase, node, reason)
        for node, reply in outcome.ok.items():
            self.recorder.client(server_round, node, bytes_up=payload_bytes(reply.content))
            if P.CLIENT in reply.content.config_records:
                info = dict(reply.content.config_records[P.CLIENT])
                self.clients[node] = info
                self.recorder.client(
                    server_round,
                    node,
                    modality=info[P.MODALITY],
                    architecture=info[P.ARCHITECTURE],
                    partition_id=info[P.PARTITION_ID],
                )
        require_quorum(phase, outcome, self.config.min_reply_fraction, self.config.min_nodes)
        return outcome

    def exclude(self, phase: str, server_round: int, outcome: PhaseOutcome, reasons: dict[int, str]) -> None:
        """Move accepted replies that a later check refused to the phase's failures (one node is
        never both), then hold the phase to its quorum again."""
        for node, reason in sorted(reasons.items()):
            del outcome.ok[node]
            outcome.failed[node] = reason
            self.recorder.failure(server_round, phase, node, reason)
            log(WARNING, "%s: node %d excluded: %s", phase, node, reason)
        if reasons:
            require_quorum(phase, outcome, self.config.min_reply_fraction, self.config.min_nodes)

    # ------------------------------------------------------------------ Strategy API
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round_start = time.perf_counter()
        self.nodes = self.sampler.sample(grid, server_round)
        self.prepare_round(server_round, grid)
        contents = {node: self.train_content(server_round, node) for node in self.nodes}
        self._phase_start = time.perf_counter()
        return self.send(P.TRAIN_DISTILL, P.TRAIN_DISTILL, server_round, contents)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.recorder.server(server_round, time_distill_phase_s=time.perf_counter() - self._phase_start)
        outcome = self.receive(P.TRAIN_DISTILL, server_round, replies, self.check_train_reply)
        self.exclude(P.TRAIN_DISTILL, server_round, outcome, self.screen_train(server_round, outcome))
        losses = []
        for node, reply in outcome.ok.items():
            metrics = reply.content.metric_records[P.METRICS]
            self.recorder.client(server_round, node, train_loss=float(metrics[P.TRAIN_LOSS]))
            for key in ("kl", "synthetic-visits"):  # optional distillation figures
                if isinstance(metrics.get(key), (int, float)):
                    self.recorder.client(server_round, node, **{key.replace("-", "_"): float(metrics[key])})
            losses.append(float(metrics[P.TRAIN_LOSS]))
        self.after_train(server_round, outcome)
        return None, MetricRecord({"train-loss-mean": sum(losses) / len(losses), "clients": len(losses)})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        contents = {node: self.evaluate_content(server_round, node) for node in self.nodes}
        self._phase_start = time.perf_counter()
        return self.send(P.EVALUATE, P.EVALUATE, server_round, contents)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        self.recorder.server(server_round, time_evaluate_phase_s=time.perf_counter() - self._phase_start)
        check = lambda reply: check_metrics_reply(reply, self.evaluate_metrics)  # noqa: E731
        outcome = self.receive(P.EVALUATE, server_round, replies, check)
        for node, reply in outcome.ok.items():
            m = reply.content.metric_records[P.METRICS]
            self.recorder.client(
                server_round,
                node,
                acc_local=float(m[P.ACC_LOCAL]),
                acc_global=float(m[P.ACC_GLOBAL]),
                loss_local=float(m.get(P.LOSS_LOCAL, float("nan"))),
                loss_global=float(m.get(P.LOSS_GLOBAL, float("nan"))),
                num_examples=int(m[P.NUM_EXAMPLES]),
            )
        self.after_evaluate(server_round)
        self.recorder.server(server_round, time_round_s=time.perf_counter() - self._round_start)
        self.recorder.write()
        if self.config.checkpoint:
            self.save_checkpoint(server_round)
        summary = self.recorder.round_summary(server_round)
        log(
            INFO,
            "round %d: %s",
            server_round,
            ", ".join(f"{k}={v:.3f}" for k, v in summary.items() if "acc" in k),
        )
        failed = failed_nodes(self.recorder.failures, server_round)
        if failed:
            details = "; ".join(f"node {n} ({', '.join(r)})" for n, r in failed.items())
            log(
                WARNING,
                "round %d: %d of %d sampled nodes failed: %s",
                server_round,
                len(failed),
                len(self.nodes),
                details,
            )
        summary["failed_nodes"] = len(failed)
        return MetricRecord({k: float(v) for k, v in summary.items()})

    def summary(self) -> None:
        log(INFO, "\t├── %s", type(self).__name__)
        for key, value in self.config.as_run_config().items():
            log(INFO, "\t│   ├── %s: %s", key, value)
