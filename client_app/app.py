"""The ClientApp: wires Flower messages to the task-model code. No algorithm lives here.

Handlers: ``query.infer`` (outputs on the server's synthetic inputs), ``query.secagg`` (one stage
of secure aggregation, in place of ``query.infer`` with ``secure-aggregation = true``), ``train.distill``
(private training plus optional distillation targets), ``evaluate`` (local and global test).
Record keys are documented in docs/protocol.md and defined in `fedmmkt_strategy.protocol`.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_app.node import ClientNode
from client_app.secagg_client import STATE as SECAGG_STATE
from client_app.secagg_client import SecAggAbort
from client_app.secagg_client import step as secure_step
from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.pool_sync import apply_pool_update, cached_synthetic
from fedmmkt_strategy.steps.fusion import contrastive_terms
from fedmmkt_strategy.steps.labvote import own_class_weights, vote_terms
from fedmmkt_strategy.steps.privacy import privatize
from task_models.training import DistillTargets, evaluate_model, infer, train_model


def pin_threads(msg: Message, context: Context, call_next) -> Message:
    """Flower mod: run the handler on ``client-threads`` torch threads (0: as the process has).

    Pinned per message and restored after it, never at import: the simulation engine imports this
    module inside the process that also runs the ServerApp, which must keep every core. Simulated
    nodes need no pin (Ray starts each with OMP_NUM_THREADS = its `client-resources-num-cpus`); a
    deployed SuperNode runs a fresh process per message that uses the device's cores unless told."""
    threads = RunConfig.from_run_config(context.run_config).client_threads
    if threads == 0:
        return call_next(msg, context)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return call_next(msg, context)
    finally:
        torch.set_num_threads(previous)


app = ClientApp(mods=[pin_threads])
#: context.state record of this node's embeddings on the pool, between a secure vote and fusion
SECURE_EMBEDDING = "secagg-embedding"


def _node(msg: Message, context: Context) -> ClientNode:
    """This node, checked against the world the server announces: a node whose run config builds
    another world (another dataset, class count) fails the message instead of sending rows the
    server cannot read."""
    config = msg.content[P.CONFIG] if P.CONFIG in msg.content.config_records else {}
    run_key = config.get(P.RUN_KEY)
    node = ClientNode.from_context(context, run_key=str(run_key) if run_key else None)
    announced = config.get(P.NUM_CLASSES)
    if announced is not None and int(announced) != node.world.num_classes:
        raise ValueError(
            f"the server's world has {announced} classes, this node's {node.world.num_classes}: "
            "run the node with the run config of the server's run"
        )
    return node


def _synthetic_inputs(node: ClientNode, msg: Message, context: Context) -> torch.Tensor:
    """This modality's synthetic inputs: the cached pool, updated with the rows the message carries."""
    if P.SYNTHETIC in msg.content.array_records:
        apply_pool_update(context.state, msg.content[P.SYNTHETIC])
        node.persist(context)  # a restarted node then holds the pool, and gets only new rows
    return node.model_input(cached_synthetic(context.state, node.role.modality))


def _inference(node: ClientNode, msg: Message, context: Context) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities, entropies and embeddings on the synthetic inputs (float32), noised when
    the uploads are differentially private."""
    inputs = _synthetic_inputs(node, msg, context)
    out = infer(node.model, inputs, amp=node.config.client_amp, temperature=node.vote_temperature())
    cfg = node.config
    if cfg.dp_noise_multiplier > 0:  # noise from OS entropy: the server knows the run seed
        return privatize(out.probs, out.embedding, cfg.dp_clip, cfg.dp_noise_multiplier, np.random.default_rng())
    return out.probs, out.entropy, out.embedding


@app.query("infer")
def query_infer(msg: Message, context: Context) -> Message:
    """Probabilities, entropies and projected embeddings on the synthetic inputs, in `uplink-dtype`."""
    node = _node(msg, context)
    probs, entropy, embedding = _inference(node, msg, context)
    cfg = node.config
    # privatize() and the model work in float32; only the upload is cast (float16 halves it)
    dtype = np.dtype(cfg.uplink_dtype)
    content = RecordDict(
        {
            P.INFERENCE: ArrayRecord(
                {
                    P.PROBS: Array(np.ascontiguousarray(probs, dtype)),
                    P.ENTROPY: Array(np.ascontiguousarray(entropy, dtype)),
                    P.EMBEDDING: Array(np.ascontiguousarray(embedding, dtype)),
                }
            ),
            P.CLIENT: node.describe(with_label_counts=bool(msg.content[P.CONFIG].get(P.SEND_LABEL_COUNTS, False))),
        }
    )
    return Message(content, reply_to=msg)


def _secure_contribution(node: ClientNode, msg: Message, context: Context) -> np.ndarray:
    """This node's float vector in a secure-aggregation session (`secagg_client.step` masks it):
    its label counts, its share of the vote's sums, or its share of its modality's aggregate."""
    config = msg.content[P.SECAGG]
    purpose = config[P.SECAGG_PURPOSE]
    inputs = msg.content[P.SECAGG_INPUTS] if P.SECAGG_INPUTS in msg.content.array_records else {}
    counts = np.bincount(node.data.train.labels, minlength=node.world.num_classes).astype(np.float64)
    cfg = node.config
    if purpose == "label-counts":
        return counts
    if purpose == "vote":
        probs, entropy, embedding = _inference(node, msg, context)
        context.state[SECURE_EMBEDDING] = ArrayRecord({P.EMBEDDING: Array(np.ascontiguousarray(embedding, np.float32))})
        rule, class_weights = str(config[P.SECAGG_VOTE_RULE]), str(config[P.SECAGG_CLASS_WEIGHTS])
        weight = None
        if class_weights != "none":
            classes = inputs[P.PROMPT_CLASSES].numpy()
            totals = inputs[P.CLASS_TOTALS].numpy() if class_weights == "totals" else None
            weight = (
                np.zeros(len(classes)) if class_weights == "abstain" else own_class_weights(counts, classes, totals)
            )
        return vote_terms(probs, entropy, cfg.labvote_beta, rule, weight)
    if purpose == "fusion":
        rows = inputs[P.INDICES].numpy()
        embedding = context.state[SECURE_EMBEDDING][P.EMBEDDING].numpy()[rows]
        anchors = torch.as_tensor(inputs[P.ANCHORS].numpy())
        rule = str(config[P.SECAGG_FUSION_RULE])
        return contrastive_terms(torch.as_tensor(embedding), anchors, cfg.contrastive_tau, cfg.contrastive_batch, rule)
    raise SecAggAbort(f"unknown purpose {purpose!r}")


@app.query("secagg")
def query_secagg(msg: Message, context: Context) -> Message:
    """One stage of secure aggregation (``secure-aggregation = true``, docs/protocol.md): the node
    masks its contribution so that the server learns only sums over clients."""
    config = msg.content[P.SECAGG]
    stage = str(config[P.SECAGG_STAGE])
    node = _node(msg, context) if stage in ("setup", "collect") else None  # the others need no model
    if SECAGG_STATE not in context.state.config_records:
        context.state[SECAGG_STATE] = ConfigRecord()
    state = context.state.config_records[SECAGG_STATE]
    contribution = partial(_secure_contribution, node, msg, context) if stage == "collect" else None
    values, vector = secure_step(state, config, msg.metadata.dst_node_id, contribution)
    context.state[SECAGG_STATE] = state
    content = RecordDict({P.SECAGG: ConfigRecord(values)})
    if node is not None:
        content[P.CLIENT] = node.describe()
    if vector is not None:
        content[P.SECAGG_MASKED] = ArrayRecord({P.VECTOR: Array(vector)})
    return Message(content, reply_to=msg)


def _distill_targets(node: ClientNode, msg: Message, context: Context) -> DistillTargets | None:
    if P.TARGETS not in msg.content.array_records:
        return None
    targets = msg.content[P.TARGETS]
    rows = torch.as_tensor(targets[P.INDICES].numpy()).long()
    cfg = node.config

    def optional(key: str) -> torch.Tensor | None:
        return torch.as_tensor(targets[key].numpy()).float() if key in targets else None

    return DistillTargets(
        inputs=_synthetic_inputs(node, msg, context)[rows],
        soft_labels=optional(P.SOFT_LABELS),
        fused=optional(P.FUSED),
        weights=optional(P.WEIGHTS),
        temperature=cfg.distill_temperature,
        lambda_kl=cfg.lambda_kl,
        lambda_rep=cfg.lambda_rep,
        passes=cfg.distill_passes,
    )


@app.train("distill")
def train_distill(msg: Message, context: Context) -> Message:
    """Train on private data (plus distillation when targets are sent); keep the model local."""
    node = _node(msg, context)
    if P.ARRAYS in msg.content.array_records:
        node.load_arrays(msg.content[P.ARRAYS])
    cfg, server_round = node.config, int(msg.content[P.CONFIG][P.SERVER_ROUND])
    x, y = node.tensors("train")
    settings = node.train_settings(epochs=cfg.local_epochs)
    stats = train_model(
        node.model, x, y, settings, seed=cfg.seed * 1000 + server_round, distill=_distill_targets(node, msg, context)
    )
    node.save(context)
    content = RecordDict(
        {
            P.METRICS: MetricRecord(
                {
                    P.TRAIN_LOSS: stats["loss"],
                    P.NUM_EXAMPLES: int(stats["num-examples"]),
                    "ce": stats["ce"],
                    "kl": stats["kl"],
                    "rep": stats["rep"],
                    "synthetic-rows": int(stats["synthetic-rows"]),
                    "synthetic-visits": int(stats["synthetic-visits"]),
                }
            ),
            P.CLIENT: node.describe(),
        }
    )
    if msg.content[P.CONFIG].get(P.RETURN_ARRAYS, False):
        content[P.ARRAYS] = ArrayRecord(node.cpu_state())
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Top-1 accuracy on the local test split and on the global test set of the modality."""
    node = _node(msg, context)
    if P.ARRAYS in msg.content.array_records:
        node.load_arrays(msg.content[P.ARRAYS])
        node.save(context)
    amp = node.config.client_amp
    local = evaluate_model(node.model, *node.tensors("test"), amp=amp)
    global_ = evaluate_model(node.model, *node.tensors("global_test"), amp=amp)
    content = RecordDict(
        {
            P.METRICS: MetricRecord(
                {
                    P.ACC_LOCAL: local["accuracy"],
                    P.LOSS_LOCAL: local["loss"],
                    P.ACC_GLOBAL: global_["accuracy"],
                    P.LOSS_GLOBAL: global_["loss"],
                    P.NUM_EXAMPLES: int(local["num-examples"]),
                }
            ),
            P.CLIENT: node.describe(),
        }
    )
    return Message(content, reply_to=msg)
