"""Secure aggregation of FedMMKT's uploads (``secure-aggregation = true``): the server's side.

In a plain round every client uploads per-sample probabilities and embeddings. Both uses of
them are sums over clients: LabVote's soft label is ``sum_k w_k p_k / sum_k w_k``
(`labvote.vote_terms`) and the contrastive aggregate is, once normalised, ``sum_k exp(s_k) r_k``
with ``s_k`` computable on the client against anchors the server sends
(`fusion.contrastive_terms`). So each round runs, instead of ``query.infer``:

1. ``label-counts`` (first round, and whenever the sampled nodes change; class-aware vote only):
   each modality's private examples per class, a sum per modality;
2. ``vote``: the three sums of LabVote over all clients, computed on the synthetic rows the
   collect message brings (the same pool update ``query.infer`` carries);
3. ``fusion``: one sum per modality over the kept rows, against anchors the server sends.

Each sum is one session of the four SecAgg+ stages (`secagg.py`, client side
`client_app/secagg_client.py`): setup (public keys), share-keys (encrypted Shamir shares of each
client's mask seed and key, relayed by the server), collect (masked vectors) and unmask (shares
of the survivors' seeds and of the dropped clients' keys). A client that drops out after the
key exchange is unmasked away; fewer survivors than the threshold, or a modality left with one
survivor, and that sum is skipped for the round, logged, while the round goes on.

The server holds the sums only. Lost with it (docs/robustness.md): per-client diagnostics
(counted-vote shares, contrastive weights), per-sample reply validation beyond the vector's
shape and range, and the reliability defence (refused by the config).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.serverapp import Grid

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.federation.validation import check_client_record, check_record_names
from fedmmkt_strategy.generative.server_models import caption_anchors
from fedmmkt_strategy.steps.labvote import vote_from_terms
from fedmmkt_strategy.steps.secagg import reconstruction_threshold, unmask_sum
from worlds.modality import MODALITIES

#: Largest key or share the server relays (a P-384 key in DER is ~120 bytes, a share ~260).
MAX_BLOB = 4096


@dataclass
class SecureSum:
    """Result of one session: group -> float64 sum of its surviving members' vectors."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    members: dict[str, list[int]] = field(default_factory=dict)  # group -> nodes inside its sum
    skipped: dict[str, str] = field(default_factory=dict)  # group -> why it has no sum
    collected: list[int] = field(default_factory=list)  # nodes whose collect message was answered


def _config_of(reply: Message) -> ConfigRecord | None:
    return reply.content.config_records.get(P.SECAGG)


def _blobs(value: object, count: int | None = None) -> bool:
    """A list of `count` non-empty byte strings, none larger than MAX_BLOB."""
    ok = isinstance(value, list) and all(isinstance(b, bytes) and 0 < len(b) <= MAX_BLOB for b in value)
    return ok and (count is None or len(value) == count)


def _ints(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def check_stage_reply(reply: Message, stage: str, **expected) -> str | None:
    """A stage reply: its records, optional client description, and the stage's values."""
    reason = check_record_names(reply)
    if reason:
        return reason
    if P.CLIENT in reply.content.config_records and (reason := check_client_record(reply)):
        return reason
    config = _config_of(reply)
    if config is None:
        return f"missing ConfigRecord {P.SECAGG!r}"
    if stage == "setup":
        pk1, pk2 = config.get(P.SECAGG_PK1), config.get(P.SECAGG_PK2)
        if not _blobs([pk1, pk2]) or pk1 == pk2:
            return "setup: pk1 and pk2 must be two distinct byte strings"
        if P.CLIENT not in reply.content.config_records:
            return f"setup: missing ConfigRecord {P.CLIENT!r}"
    elif stage == "share-keys":
        dst, ct = config.get(P.SECAGG_DESTINATIONS), config.get(P.SECAGG_CIPHERTEXTS)
        if not (_ints(dst) and _blobs(ct, len(dst))):
            return "share-keys: destinations and ciphertexts must be lists of equal length"
        if sorted(dst) != sorted(expected["others"]):
            return "share-keys: ciphertexts must go to every other node of the session exactly once"
    elif stage == "collect":
        if P.SECAGG_MASKED not in reply.content.array_records:
            return f"collect: missing ArrayRecord {P.SECAGG_MASKED!r}"
        record = reply.content[P.SECAGG_MASKED]
        if set(record.keys()) != {P.VECTOR}:
            return f"collect: {P.SECAGG_MASKED!r} must hold exactly {P.VECTOR!r}"
        vector = record[P.VECTOR].numpy()
        if vector.dtype != np.uint64 or vector.shape != (expected["length"],):
            return f"collect: vector has {vector.dtype} {vector.shape}, expected uint64 ({expected['length']},)"
    elif stage == "unmask":
        nodes, shares = config.get(P.SECAGG_NODES), config.get(P.SECAGG_SHARES)
        if not (_ints(nodes) and _blobs(shares, len(nodes))) or len(set(nodes)) != len(nodes):
            return "unmask: nodes and shares must be lists of equal length, each node once"
        if not set(nodes) <= expected["asked"]:
            return "unmask: shares of nodes the server did not ask for"
    return None


def _sender(reply: Message) -> int:
    """The node a (non-error) reply comes from, for checks that depend on the node."""
    return int(reply.metadata.src_node_id)


class SecureAggregator:
    """Runs one secure-sum session through a strategy's `send`/`receive` (bytes, failures,
    quorum and reply matching as in every other phase)."""

    def __init__(self, strategy, grid: Grid, server_round: int, threshold_fraction: float):
        self.strategy = strategy
        self.grid = grid
        self.server_round = server_round
        self.fraction = threshold_fraction

    def _exchange(self, purpose: str, stage: str, contents: dict[int, RecordDict], check) -> dict[int, Message]:
        phase = f"{P.QUERY_SECAGG}.{purpose}.{stage}"
        s = self.strategy
        messages = s.send(phase, P.QUERY_SECAGG, self.server_round, contents)
        replies = self.grid.send_and_receive(messages, timeout=s.config.round_timeout)
        return s.receive(phase, self.server_round, replies, check).ok

    def _content(self, session: str, purpose: str, stage: str, values: dict, extra: RecordDict | None = None):
        config = ConfigRecord({P.SECAGG_STAGE: stage, P.SECAGG_SESSION: session, P.SECAGG_PURPOSE: purpose, **values})
        content = RecordDict({P.SECAGG: config, P.CONFIG: ConfigRecord({P.SERVER_ROUND: self.server_round})})
        for name, record in (extra or {}).items():
            content[name] = record
        return content

    def run(
        self,
        purpose: str,
        nodes: list[int],
        group_of: Callable[[int], str],
        length_of: Callable[[str], int],
        collect_extra: Callable[[int], tuple[dict, RecordDict]],
    ) -> SecureSum:
        """One session over `nodes`.

        `group_of(node)` is asked after setup (its reply tells the node's modality),
        `length_of(group)` gives a group's vector length, and `collect_extra(node)` the collect
        message's extra config values and records (pool rows, anchors, rules).
        """
        session = f"r{self.server_round}-{purpose}"
        result = SecureSum()
        if len(nodes) < 2:
            result.skipped["*"] = f"{len(nodes)} node(s): a sum of fewer than two hides nothing"
            return result
        threshold = reconstruction_threshold(len(nodes), self.fraction)
        # 1. setup: fresh key pairs
        setup = {n: self._content(session, purpose, "setup", {P.SECAGG_THRESHOLD: threshold}) for n in nodes}
        ok = self._exchange(purpose, "setup", setup, lambda r: check_stage_reply(r, "setup"))
        keys = {n: (_config_of(r)[P.SECAGG_PK1], _config_of(r)[P.SECAGG_PK2]) for n, r in ok.items()}
        alive = sorted(keys)
        if len(alive) < threshold:
            result.skipped["*"] = f"{len(alive)} nodes after setup, threshold {threshold}"
            return result
        group_names = sorted({group_of(n) for n in alive})
        groups = [group_names.index(group_of(n)) for n in alive]
        # 2. share-keys: every node gets everyone's keys, returns its shares encrypted per recipient
        values = {
            P.SECAGG_NODES: alive,
            P.SECAGG_PK1: [keys[n][0] for n in alive],
            P.SECAGG_PK2: [keys[n][1] for n in alive],
            P.SECAGG_GROUPS: groups,
        }
        share = {n: self._content(session, purpose, "share-keys", values) for n in alive}
        others = {n: [m for m in alive if m != n] for n in alive}
        ok = self._exchange(
            purpose,
            "share-keys",
            share,
            lambda r: check_stage_reply(r, "share-keys", others=others.get(_sender(r), [])),
        )
        relay: dict[int, list[tuple[int, bytes]]] = {n: [] for n in ok}
        for src, reply in sorted(ok.items()):
            config = _config_of(reply)
            for dst, ciphertext in zip(config[P.SECAGG_DESTINATIONS], config[P.SECAGG_CIPHERTEXTS]):
                if dst in relay:
                    relay[dst].append((src, ciphertext))
        exchanged = sorted(ok)
        if len(exchanged) < threshold:
            result.skipped["*"] = f"{len(exchanged)} nodes after the key exchange, threshold {threshold}"
            return result
        # 3. collect: each node masks its vector with its seed and its group peers' pairwise keys
        collect, lengths = {}, {}
        for node in exchanged:
            extra_values, extra_records = collect_extra(node)
            values = {
                P.SECAGG_SOURCES: [s for s, _ in relay[node]],
                P.SECAGG_CIPHERTEXTS: [c for _, c in relay[node]],
                **extra_values,
            }
            collect[node] = self._content(session, purpose, "collect", values, extra_records)
            lengths[node] = length_of(group_of(node))
        ok = self._exchange(
            purpose,
            "collect",
            collect,
            lambda r: check_stage_reply(r, "collect", length=lengths.get(_sender(r), -1)),
        )
        vectors = {n: r.content[P.SECAGG_MASKED][P.VECTOR].numpy() for n, r in ok.items()}
        result.collected = sorted(vectors)
        by_group: dict[str, list[int]] = {}
        for node in sorted(vectors):
            by_group.setdefault(group_of(node), []).append(node)
        for name in group_names:
            if len(by_group.get(name, [])) < 2:
                result.skipped[name] = f"{len(by_group.get(name, []))} surviving member(s); one would be exposed"
                by_group.pop(name, None)
        active = sorted(n for members in by_group.values() for n in members)
        dead = sorted(set(exchanged) - set(vectors))
        if len(active) < threshold:
            result.skipped["*"] = f"{len(active)} vectors to unmask, threshold {threshold}"
            return result
        # 4. unmask: shares of the survivors' seeds and of the dropped nodes' first secret keys
        asked = set(active) | set(dead)
        values = {P.SECAGG_ACTIVE: active, P.SECAGG_DEAD: dead}
        unmask = {n: self._content(session, purpose, "unmask", values) for n in active}
        ok = self._exchange(purpose, "unmask", unmask, lambda r: check_stage_reply(r, "unmask", asked=asked))
        shares: dict[int, list[bytes]] = {n: [] for n in asked}
        for reply in ok.values():
            config = _config_of(reply)
            for node, blob in zip(config[P.SECAGG_NODES], config[P.SECAGG_SHARES]):
                shares[node].append(blob)
        pk1 = {n: keys[n][0] for n in alive}
        secrets = {}
        for node in sorted(asked):
            if len(shares[node]) < threshold:
                continue
            try:
                secrets[node] = combine_shares(shares[node][:threshold])
            except Exception as err:  # corrupted shares: that secret is lost, not the round
                log(WARNING, "secure aggregation %s: shares of node %d do not combine: %s", session, node, err)
        for name, members in sorted(by_group.items()):
            missing = [n for n in members if n not in secrets]
            lost = [n for n in dead if group_of(n) == name and n not in secrets]
            if missing or lost:
                result.skipped[name] = f"too few shares to unmask nodes {missing + lost}"
                continue
            dropped = {n: secrets[n] for n in dead if group_of(n) == name}
            result.sums[name] = unmask_sum(
                {n: vectors[n] for n in members}, session, {n: secrets[n] for n in members}, dropped, pk1
            )
            result.members[name] = members
        for name, reason in sorted(result.skipped.items()):
            log(WARNING, "secure aggregation %s: no sum for group %s: %s", session, name, reason)
        log(INFO, "secure aggregation %s: sums of %s", session, {g: len(m) for g, m in result.members.items()})
        return result


# ---------------------------------------------------------------- FedMMKT's steps 2-4 on secure sums
def _modality(strategy, node: int) -> str:
    return str(strategy.clients[node][P.MODALITY])


def _inputs(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: Array(np.ascontiguousarray(value)) for key, value in arrays.items()})


def refresh_label_totals(strategy, aggregator: SecureAggregator) -> None:
    """Each modality's private examples per class, as one secure sum per modality: what the
    class-aware vote divides a client's own counts by (`labvote.own_class_weights`)."""
    num_classes = strategy.world.num_classes
    nodes = list(strategy.nodes)
    result = aggregator.run(
        "label-counts",
        nodes,
        group_of=lambda node: _modality(strategy, node),
        length_of=lambda group: num_classes,
        collect_extra=lambda node: ({}, RecordDict()),
    )
    strategy.class_totals = {m: np.round(total).clip(0, None) for m, total in result.sums.items()}
    sizes: dict[str, int] = {}
    for node in nodes:
        if node in strategy.clients:
            sizes[_modality(strategy, node)] = sizes.get(_modality(strategy, node), 0) + 1
    strategy.modality_sizes = sizes
    strategy.secure_counted = set(nodes)


def secure_vote(strategy, grid: Grid, server_round: int):
    """Step 2-3 under secure aggregation: (the VoteResult of the secure sum, the nodes inside
    it). The strategy settles the vote (prompt mix, diagnostics) as in the plain round.

    The collect message carries the pool rows the node lacks (as ``query.infer`` does), the vote
    rule, and for the class-aware vote the prompt classes and the node's modality totals."""
    s, cfg = strategy, strategy.config
    aggregator = SecureAggregator(s, grid, server_round, cfg.secagg_threshold)
    n, c = len(s.pool), s.world.num_classes
    class_aware = s.use_vote and cfg.labvote_class_weights == "label-counts"
    if class_aware and set(s.nodes) != s.secure_counted:
        refresh_label_totals(s, aggregator)

    def collect_extra(node: int) -> tuple[dict, RecordDict]:
        values = {P.SECAGG_VOTE_RULE: "labvote" if s.use_vote else "average", P.SECAGG_CLASS_WEIGHTS: "none"}
        records = RecordDict({P.SYNTHETIC: s._pool_update(server_round, node)})
        if class_aware:
            modality = _modality(s, node)
            inputs = {P.PROMPT_CLASSES: s.pool.classes.astype(np.int64)}
            if modality in s.class_totals:
                values[P.SECAGG_CLASS_WEIGHTS] = "totals"
                inputs[P.CLASS_TOTALS] = s.class_totals[modality].astype(np.float64)
            else:  # alone in its modality its share is 1 wherever it saw the class; else no totals yet
                values[P.SECAGG_CLASS_WEIGHTS] = "alone" if s.modality_sizes.get(modality) == 1 else "abstain"
            records[P.SECAGG_INPUTS] = _inputs(inputs)
        return values, records

    result = aggregator.run("vote", list(s.nodes), lambda node: "all", lambda group: n * c + 2 * n, collect_extra)
    for node in s.nodes:
        if node in result.collected:
            s.node_pool_round[node] = server_round
        else:
            s.node_pool_round.pop(node, None)
    members = result.members.get("all", [])
    if "all" in result.sums:
        vote = vote_from_terms(result.sums["all"], n, c)
    else:
        vote = vote_from_terms(np.zeros(n * c + 2 * n), n, c)  # nothing kept: no targets this round
    return vote, members


def secure_fuse(strategy, grid: Grid, server_round: int, vote, members: list[int]) -> dict[str, torch.Tensor]:
    """Step 4a under secure aggregation: each modality's aggregate [M, d] of the kept rows, one
    secure sum of `fusion.contrastive_terms` against the anchors the server sends; the strategy
    then applies cross-attention as in the plain round. A modality with fewer than two members
    gets no aggregate."""
    s, cfg = strategy, strategy.config
    kept = vote.kept_indices
    if len(kept) == 0 or not members:
        return {}
    text_anchor = caption_anchors(s.models, [s.pool.captions[i] for i in kept])
    s.forget_regenerated(server_round)
    modalities = {_modality(s, node) for node in members}
    anchors = {m: s._anchors(m, kept, text_anchor).float().numpy() for m in modalities}
    rule = "contrastive" if s.use_contrastive else "mean"

    def collect_extra(node: int) -> tuple[dict, RecordDict]:
        inputs = {P.INDICES: kept.astype(np.int64), P.ANCHORS: anchors[_modality(s, node)].astype(np.float32)}
        return {P.SECAGG_FUSION_RULE: rule}, RecordDict({P.SECAGG_INPUTS: _inputs(inputs)})

    d = cfg.fusion_dim
    aggregator = SecureAggregator(s, grid, server_round, cfg.secagg_threshold)
    result = aggregator.run("fusion", members, lambda node: _modality(s, node), lambda g: len(kept) * d, collect_extra)
    return {
        m: F.normalize(torch.as_tensor(result.sums[m].reshape(len(kept), d), dtype=torch.float32), dim=-1)
        for m in MODALITIES
        if m in result.sums
    }
