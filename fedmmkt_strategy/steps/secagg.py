"""Secure aggregation primitives: SecAgg+ masking of float vectors, shared by server and clients.

The protocol is SecAgg+ (Bell et al., CCS 2020) as Flower implements it for its legacy ``fit``
rounds (`flwr.server.workflow.SecAggPlusWorkflow`, `flwr.client.mod.secaggplus_mod`): two key
pairs per client, Shamir shares of a private mask seed and of the pairwise-mask key sent
encrypted through the server, masked uploads, and an unmask stage that removes the masks of the
survivors and of the clients that dropped out. Flower 1.42 offers that workflow only for
``fit`` messages of a `LegacyContext`; FedMMKT's uploads are ``query`` messages of the Message
API carrying several sums per round, so this project runs the same four stages itself, on
Flower's primitives: ECDH key pairs and HKDF shared keys, Fernet encryption, Shamir sharing.

Two departures from Flower's helpers, both deliberate:

* Masks are expanded with SHAKE-256 (a cryptographic XOF) from the full 32-byte seed.
  Flower's `pseudo_rand_gen` folds the seed to 32 bits for numpy's `RandomState`, which a
  server could search exhaustively to strip a client's mask.
* Values are quantised deterministically, ``round(x * 2^32)``, into ``uint64`` arithmetic
  modulo 2^64 (numpy wraps), so a sum of masked vectors is exact and the server's result
  differs from the plain sum by at most ``K * 2^-33`` per entry (K clients), with no random
  rounding consuming the global numpy generator.

Groups: a session's nodes may be split into groups (FedMMKT's modalities) whose sums are
reconstructed separately. Pairwise masks only join members of one group; private-mask seeds
and key shares go to every node of the session. A client never releases the share of a node
that would be the only surviving member of its group, so a single client's vector is never
unmasked alone.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

#: Fixed-point scale: a value x travels as round(x * SCALE) modulo 2^64.
SCALE = 2**32
#: Largest magnitude a single value may have; sums of up to 2^10 clients stay below 2^63 / SCALE.
MAX_VALUE = 2.0**20
#: Message stages, in protocol order.
STAGES = ("setup", "share-keys", "collect", "unmask")
#: Domain separation of the mask expansion (no other use of these seeds may produce these bytes).
_MASK_DOMAIN = b"fedmmkt-secagg-mask-v1"


def reconstruction_threshold(num_nodes: int, fraction: float) -> int:
    """Shares needed to rebuild a secret: ``ceil(fraction * n)``, at least 2 and at most n.

    Fewer surviving nodes than this and no sum can be unmasked (the round goes on without it);
    more than n - threshold colluding with the server could rebuild a survivor's seed."""
    return max(2, min(num_nodes, math.ceil(fraction * num_nodes)))


def quantize(values: np.ndarray) -> np.ndarray:
    """Finite float values in [-MAX_VALUE, MAX_VALUE] -> uint64 fixed point (two's complement)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(values).all():
        raise ValueError("secure aggregation: the vector to mask has non-finite entries")
    if np.abs(values).max(initial=0.0) > MAX_VALUE:
        raise ValueError(f"secure aggregation: entries beyond +-{MAX_VALUE:g} would overflow the sum")
    return np.round(values * SCALE).astype(np.int64).view(np.uint64)


def dequantize(total: np.ndarray) -> np.ndarray:
    """A uint64 sum of quantised vectors -> float64 (the two's-complement reading)."""
    return np.asarray(total, dtype=np.uint64).view(np.int64).astype(np.float64) / SCALE


def expand_mask(seed: bytes, session: str, length: int) -> np.ndarray:
    """`length` pseudo-random uint64 words from a secret seed (SHAKE-256), one stream per session."""
    stream = hashlib.shake_256(_MASK_DOMAIN + session.encode() + b"\x00" + seed).digest(8 * length)
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


def pairwise_key(private_key: bytes, public_key: bytes) -> bytes:
    """The secret two nodes share (ECDH + HKDF): node u's sk1 with v's pk1 equals v's sk1 with u's pk1."""
    return generate_shared_key(bytes_to_private_key(private_key), bytes_to_public_key(public_key))


def pairwise_sign(own: int, other: int) -> int:
    """+1 when `own` adds the pair's mask, -1 when it subtracts it (the larger node id adds)."""
    return 1 if own > other else -1


def apply_mask(vector: np.ndarray, mask: np.ndarray, sign: int) -> np.ndarray:
    """vector + sign * mask modulo 2^64."""
    with np.errstate(over="ignore"):
        return vector + mask if sign > 0 else vector - mask


def masked_vector(
    values: np.ndarray,
    session: str,
    own: int,
    seed: bytes,
    own_sk1: bytes,
    peer_pk1: dict[int, bytes],
) -> np.ndarray:
    """A client's upload: its quantised values plus its private mask and one pairwise mask per
    group peer that is still in the session (`peer_pk1`: node -> its first public key)."""
    vector = apply_mask(quantize(values), expand_mask(seed, session, np.asarray(values).size), +1)
    for peer, pk1 in sorted(peer_pk1.items()):
        mask = expand_mask(pairwise_key(own_sk1, pk1), session, vector.size)
        vector = apply_mask(vector, mask, pairwise_sign(own, peer))
    return vector


def unmask_sum(
    masked: dict[int, np.ndarray],
    session: str,
    seeds: dict[int, bytes],
    dropped_sk1: dict[int, bytes],
    pk1: dict[int, bytes],
) -> np.ndarray:
    """The float sum of one group's values from its survivors' masked vectors.

    Parameters
    ----------
    masked : dict
        Surviving node -> its masked upload (all of one group, equal lengths).
    seeds : dict
        Surviving node -> its private-mask seed, rebuilt from the shares of the others.
    dropped_sk1 : dict
        Node of this group that took part in the key exchange but sent no vector -> its first
        secret key, rebuilt from shares: the pairwise masks the survivors added for it go too.
    pk1 : dict
        Node -> first public key, for every node above.
    """
    nodes = sorted(masked)
    length = masked[nodes[0]].size
    total = np.zeros(length, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for node in nodes:
            total = total + masked[node] - expand_mask(seeds[node], session, length)
    for dead, sk1 in sorted(dropped_sk1.items()):
        for node in nodes:
            mask = expand_mask(pairwise_key(sk1, pk1[node]), session, length)
            # the survivor applied pairwise_sign(node, dead) * mask: take it off again
            total = apply_mask(total, mask, -pairwise_sign(node, dead))
    return dequantize(total)
