"""The client's side of secure aggregation: one step of the four-stage protocol per message.

What the server sees of this node in a session: two public keys, ciphertexts for other nodes,
one masked vector (uniformly random on its own) and shares of other nodes' secrets. The node's
state between stages (its secret keys, mask seed and the shares it holds for others) lives in
`context.state` as a ConfigRecord, so a deployed SuperNode, which starts a process per message,
keeps it too. The masking itself is `fedmmkt_strategy.steps.secagg`; the message layout is
docs/protocol.md, "Secure aggregation".
"""

from __future__ import annotations

import os
from collections.abc import Callable
from logging import WARNING

import numpy as np
from flwr.app import ConfigRecord
from flwr.common.logger import log
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.steps.secagg import STAGES, masked_vector, pairwise_key

#: context.state record holding this node's protocol state.
STATE = "secagg-state"


class SecAggAbort(ValueError):
    """The server asked for something the protocol forbids; the node refuses the message."""


def _expect(state: ConfigRecord, session: str, stage: str) -> None:
    """Stages come in order, within one session; a new session starts at setup."""
    if stage == "setup":
        return
    if state.get("session") != session:
        raise SecAggAbort(f"stage {stage!r} of session {session!r}, but this node is in {state.get('session')!r}")
    previous = STAGES[STAGES.index(stage) - 1]
    if state.get("stage") != previous:
        raise SecAggAbort(f"stage {stage!r} after {state.get('stage')!r}; expected it after {previous!r}")


def step(
    state: ConfigRecord, config: ConfigRecord, own: int, contribution: Callable[[], np.ndarray] | None = None
) -> tuple[dict, np.ndarray | None]:
    """Run one stage: update `state` in place, return (reply config values, masked vector or None).

    `contribution` computes this node's float vector; it is called in the collect stage only.
    """
    stage, session = str(config[P.SECAGG_STAGE]), str(config[P.SECAGG_SESSION])
    if stage not in STAGES:
        raise SecAggAbort(f"unknown stage {stage!r}; stages are {list(STAGES)}")
    _expect(state, session, stage)
    reply: dict = {}
    vector = None
    if stage == "setup":
        reply = _setup(state, config, session)
    elif stage == "share-keys":
        reply = _share_keys(state, config, own)
    elif stage == "collect":
        if contribution is None:
            raise SecAggAbort("collect stage without a contribution")
        vector = _collect(state, config, own, contribution)
    else:
        reply = _unmask(state, config, own)
    state["stage"] = stage
    return reply, vector


def _setup(state: ConfigRecord, config: ConfigRecord, session: str) -> dict:
    state.clear()
    sk1, pk1 = generate_key_pairs()
    sk2, pk2 = generate_key_pairs()
    state.update(
        {
            "session": session,
            "threshold": int(config[P.SECAGG_THRESHOLD]),
            "sk1": private_key_to_bytes(sk1),
            "pk1": public_key_to_bytes(pk1),
            "sk2": private_key_to_bytes(sk2),
            "pk2": public_key_to_bytes(pk2),
        }
    )
    return {P.SECAGG_PK1: state["pk1"], P.SECAGG_PK2: state["pk2"]}


def _share_keys(state: ConfigRecord, config: ConfigRecord, own: int) -> dict:
    nodes = [int(n) for n in config[P.SECAGG_NODES]]
    pk1s, pk2s = list(config[P.SECAGG_PK1]), list(config[P.SECAGG_PK2])
    groups = [int(g) for g in config[P.SECAGG_GROUPS]]
    threshold = int(state["threshold"])
    if not len(nodes) == len(pk1s) == len(pk2s) == len(groups):
        raise SecAggAbort("share-keys: nodes, keys and groups differ in length")
    if own not in nodes:
        raise SecAggAbort("share-keys: this node is not among the session's nodes")
    mine = nodes.index(own)
    if pk1s[mine] != state["pk1"] or pk2s[mine] != state["pk2"]:
        raise SecAggAbort("share-keys: the server relays other public keys for this node")
    if len(set(pk1s + pk2s)) != 2 * len(nodes) or len(set(nodes)) != len(nodes):
        raise SecAggAbort("share-keys: repeated node ids or public keys")
    if len(nodes) < threshold:
        raise SecAggAbort(f"share-keys: {len(nodes)} nodes, fewer than the threshold {threshold}")
    seed = os.urandom(32)
    seed_shares = create_shares(seed, threshold, len(nodes))
    sk1_shares = create_shares(state["sk1"], threshold, len(nodes))
    destinations, ciphertexts = [], []
    for i, (node, pk2) in enumerate(zip(nodes, pk2s)):
        if node == own:
            continue
        plaintext = share_keys_plaintext_concat(own, node, seed_shares[i], sk1_shares[i])
        ciphertexts.append(encrypt(pairwise_key(state["sk2"], pk2), plaintext))
        destinations.append(node)
    state.update(
        {
            "seed": seed,
            "nodes": nodes,
            "pk1s": pk1s,
            "pk2s": pk2s,
            "groups": groups,
            "share-from": [own],
            "share-seed": [seed_shares[mine]],
            "share-sk1": [sk1_shares[mine]],
        }
    )
    return {P.SECAGG_DESTINATIONS: destinations, P.SECAGG_CIPHERTEXTS: ciphertexts}


def _collect(state: ConfigRecord, config: ConfigRecord, own: int, contribution: Callable[[], np.ndarray]) -> np.ndarray:
    nodes = list(state["nodes"])
    sources = [int(n) for n in config[P.SECAGG_SOURCES]]
    ciphertexts = list(config[P.SECAGG_CIPHERTEXTS])
    if len(sources) != len(ciphertexts) or not set(sources) <= set(nodes) - {own}:
        raise SecAggAbort("collect: sources do not match the session's nodes")
    if len(sources) + 1 < int(state["threshold"]):
        raise SecAggAbort(f"collect: {len(sources) + 1} nodes left, fewer than the threshold {state['threshold']}")
    share_from, share_seed, share_sk1 = list(state["share-from"]), list(state["share-seed"]), list(state["share-sk1"])
    pk2s = dict(zip(nodes, state["pk2s"]))
    for source, ciphertext in zip(sources, ciphertexts):
        src, dst, seed_share, sk1_share = share_keys_plaintext_separate(
            decrypt(pairwise_key(state["sk2"], pk2s[source]), ciphertext)
        )
        if src != source or dst != own:
            raise SecAggAbort(f"collect: a share from node {src} to {dst} arrived as from {source} to {own}")
        share_from.append(source)
        share_seed.append(seed_share)
        share_sk1.append(sk1_share)
    state.update({"share-from": share_from, "share-seed": share_seed, "share-sk1": share_sk1})
    group = dict(zip(nodes, state["groups"]))
    pk1s = dict(zip(nodes, state["pk1s"]))
    peers = {node: pk1s[node] for node in sources if group[node] == group[own]}
    return masked_vector(contribution(), str(state["session"]), own, state["seed"], state["sk1"], peers)


def _unmask(state: ConfigRecord, config: ConfigRecord, own: int) -> dict:
    active = [int(n) for n in config[P.SECAGG_ACTIVE]]
    dead = [int(n) for n in config[P.SECAGG_DEAD]]
    holding = dict(zip(state["share-from"], zip(state["share-seed"], state["share-sk1"])))
    if set(active) & set(dead) or not set(active) | set(dead) <= set(holding):
        raise SecAggAbort("unmask: active and dead nodes overlap or include nodes outside the session")
    if len(active) < int(state["threshold"]):
        raise SecAggAbort(f"unmask: {len(active)} active nodes, fewer than the threshold {state['threshold']}")
    group = dict(zip(state["nodes"], state["groups"]))
    active_per_group: dict[int, int] = {}
    for node in active:
        active_per_group[group[node]] = active_per_group.get(group[node], 0) + 1
    lone = sorted(n for n in active if active_per_group[group[n]] < 2)
    if lone:  # their seed would unmask one client's vector alone
        log(WARNING, "secure aggregation: withholding the shares of nodes %s, alone in their group", lone)
    released = [n for n in active if n not in lone]
    return {
        P.SECAGG_NODES: released + dead,
        P.SECAGG_SHARES: [holding[n][0] for n in released] + [holding[n][1] for n in dead],
    }
