"""Message types and record keys exchanged between the ServerApp and the ClientApps.

One place for every name on the wire, so the strategy, the client and `docs/protocol.md`
cannot drift apart (a test checks the page lists every key defined here).
"""

from __future__ import annotations

# -- message types (Flower requires "<train|evaluate|query>.<action>")
QUERY_INFER = "query.infer"
TRAIN_DISTILL = "train.distill"
EVALUATE = "evaluate"
QUERY_SECAGG = "query.secagg"  # one stage of secure aggregation (secure-aggregation = true)

# -- server -> client records
CONFIG = "config"  # ConfigRecord: per-message settings below
ARRAYS = "arrays"  # ArrayRecord: model weights (FedAvg) in either direction
SYNTHETIC = "synthetic"  # ArrayRecord: the synthetic inputs of the client's modality
TARGETS = "targets"  # ArrayRecord: distillation targets on the synthetic set

# keys inside CONFIG
SERVER_ROUND = "server-round"
RETURN_ARRAYS = "return-arrays"  # bool: reply with the trained weights under ARRAYS
SEND_LABEL_COUNTS = "send-label-counts"  # bool (query.infer): add LABEL_COUNTS to the CLIENT record
NUM_CLASSES = "num-classes"  # int, in every message: C, the width of every probability row
CLASS_NAMES = "class-names"  # list[str] [C], in every message: class c's name, in label order
RUN_KEY = "run-key"  # str, in every message: the run's name (kept by a resume), keys a client's saved state

# keys inside SYNTHETIC (a client caches the pool; the server sends only rows it lacks)
IMAGES = "images"  # uint8 [R, H, W, 3]
CAPTIONS = "captions"  # str [R]
SENSORS = "sensors"  # float32 [R, D], NaN where a field is missing
ROWS = "rows"  # int64 [R]: pool rows the images/captions above replace
POOL_SIZE = "pool-size"  # int64 [1]: N, the size of the whole pool

# keys inside TARGETS
SOFT_LABELS = "soft-labels"  # float32 [M, C], rows sum to one
FUSED = "fused"  # float32 [M, d], L2-normalised (optional)
INDICES = "indices"  # int64 [M], rows of SYNTHETIC the targets refer to
WEIGHTS = "weights"  # float32 [M] in [0, 1]: each row's distillation weight (its vote confidence; optional)

# -- secure aggregation (both directions; docs/protocol.md "Secure aggregation")
SECAGG = "secagg"  # ConfigRecord: the stage and its values (keys below)
SECAGG_INPUTS = "secagg-inputs"  # ArrayRecord, server -> client (collect): what the contribution needs
SECAGG_MASKED = "secagg-masked"  # ArrayRecord, client -> server (collect): key VECTOR

# keys inside SECAGG
SECAGG_STAGE = "stage"  # "setup" | "share-keys" | "collect" | "unmask"
SECAGG_SESSION = "session"  # str: one sum's name, e.g. "r3-vote"; fresh keys for every session
SECAGG_PURPOSE = "purpose"  # "label-counts" | "vote" | "fusion": which vector the client contributes
SECAGG_THRESHOLD = "threshold"  # int (setup): Shamir shares needed to rebuild a secret
SECAGG_PK1 = "pk1"  # bytes (setup reply) / list[bytes] (share-keys): keys of the pairwise masks
SECAGG_PK2 = "pk2"  # bytes (setup reply) / list[bytes] (share-keys): keys encrypting the shares
SECAGG_NODES = "nodes"  # list[int]: the session's nodes (share-keys); whose shares follow (unmask reply)
SECAGG_GROUPS = "groups"  # list[int] (share-keys): group of each node; sums are per group
SECAGG_DESTINATIONS = "destinations"  # list[int] (share-keys reply): recipient of each ciphertext
SECAGG_CIPHERTEXTS = "ciphertexts"  # list[bytes]: encrypted shares (share-keys reply; collect)
SECAGG_SOURCES = "sources"  # list[int] (collect): sender of each ciphertext
SECAGG_ACTIVE = "active"  # list[int] (unmask): nodes whose vectors arrived
SECAGG_DEAD = "dead"  # list[int] (unmask): nodes that exchanged keys but sent no vector
SECAGG_SHARES = "shares"  # list[bytes] (unmask reply): seed shares of active, key shares of dead nodes
SECAGG_VOTE_RULE = "vote-rule"  # "labvote" | "average" (collect, purpose vote)
SECAGG_CLASS_WEIGHTS = "class-weights"  # "none" | "totals" | "alone" | "abstain" (collect, purpose vote)
SECAGG_FUSION_RULE = "fusion-rule"  # "contrastive" | "mean" (collect, purpose fusion)

# keys inside SECAGG_INPUTS / SECAGG_MASKED
PROMPT_CLASSES = "prompt-classes"  # int64 [N]: each pool row's prompted class (class-aware vote)
CLASS_TOTALS = "class-totals"  # float64 [C]: the modality's private examples per class, a secure sum
ANCHORS = "anchors"  # float32 [M, d]: contrastive anchors of the kept rows INDICES
VECTOR = "vector"  # uint64 [L]: the masked contribution

# -- client -> server records
CLIENT = "client"  # ConfigRecord describing the node (keys below)
METRICS = "metrics"  # MetricRecord: losses, accuracies, "num-examples"
INFERENCE = "inference"  # ArrayRecord: the client's outputs on SYNTHETIC

# keys inside CLIENT
MODALITY = "modality"
ARCHITECTURE = "architecture"
PARTITION = "partition"
NUM_PARTITIONS = "num-partitions"
PARTITION_ID = "partition-id"
LABEL_COUNTS = "label-counts"  # list[int] [C]: private training examples per class (only on request)

#: Top-level records of each reply type: (required, optional). A reply with any other record is
#: rejected unread: an extra record is a privacy leak (raw data next to the inference) and a
#: memory risk, never something the server needs.
UPLINK_RECORDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    QUERY_INFER: (frozenset({INFERENCE, CLIENT}), frozenset()),
    TRAIN_DISTILL: (frozenset({METRICS, CLIENT}), frozenset({ARRAYS})),
    EVALUATE: (frozenset({METRICS, CLIENT}), frozenset()),
    QUERY_SECAGG: (frozenset({SECAGG}), frozenset({CLIENT, SECAGG_MASKED})),
}

# keys inside INFERENCE
PROBS = "probs"  # float32 [N, C]
ENTROPY = "entropy"  # float32 [N], natural log
EMBEDDING = "embedding"  # float32 [N, d], projected, L2-normalised

# keys inside METRICS
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
ACC_LOCAL = "acc-local"
ACC_GLOBAL = "acc-global"
LOSS_LOCAL = "loss-local"
LOSS_GLOBAL = "loss-global"
