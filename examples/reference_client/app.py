"""A minimal FedMMKT ClientApp, written from docs/protocol.md alone ("Writing a client").

It imports nothing from `client_app/`: only the wire names (`fedmmkt_strategy.protocol`), the run
config parser, the uplink noise of `dp-noise-multiplier`, and the `task_models` functions the page
names (role, private data, model inputs, a registered task model). Training, distillation,
inference, the synthetic-pool cache and the replies are written out here, short and plain:
one optimiser (Adam), no augmentation, no calibration, no mixed precision, CPU only.

Point a copy of the app at it with ``clientapp = "examples.reference_client.app:app"`` in
`[tool.flwr.app.components]`; the README next to this file says more.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.steps.privacy import privatize
from task_models.layout import NodeRole
from task_models.models import TaskModel
from task_models.node_config import parse_node_config, resolve_role
from task_models.registry import ModelSpec, build_task_model
from worlds.client_data import ClientData, load_client_data
from worlds.modality import to_model_input
from worlds.world import World

MODEL = "model"  # context.state key: this node's weights (an ArrayRecord of its state_dict)
POOL = "synthetic"  # context.state key: this node's copy of its modality's synthetic pool
POOL_KEY = {"image": P.IMAGES, "text": P.CAPTIONS, "sensor": P.SENSORS}
BATCH = 256  # inference and evaluation batch size (any size gives the same outputs)

app = ClientApp()


@dataclass
class Node:
    """Everything a message handler needs, rebuilt from the Context on every message."""

    cfg: RunConfig
    world: World
    role: NodeRole
    partition_id: int
    data: ClientData
    model: TaskModel

    def inputs(self, raw) -> torch.Tensor:
        """Raw images, captions or sensor readings of this node's modality as model input."""
        return to_model_input(self.role.modality, raw, self.world.tokenizer())

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        part = getattr(self.data, name)
        if len(part) == 0:  # e.g. local-val-fraction = 0: no rows, and no shape to encode
            return torch.zeros(0), torch.zeros(0, dtype=torch.long)
        return self.inputs(part.inputs), torch.as_tensor(part.labels, dtype=torch.long)

    def describe(self, label_counts: bool = False) -> ConfigRecord:
        record = ConfigRecord(
            {
                P.MODALITY: self.role.modality,
                P.ARCHITECTURE: self.role.architecture,
                P.PARTITION: self.role.partition,
                P.NUM_PARTITIONS: self.role.num_partitions,
                P.PARTITION_ID: self.partition_id,
            }
        )
        if label_counts:
            counts = np.bincount(self.data.train.labels, minlength=self.world.num_classes)
            record[P.LABEL_COUNTS] = [int(n) for n in counts]
        return record

    def save(self, context: Context) -> None:
        context.state[MODEL] = ArrayRecord({k: v.detach().cpu() for k, v in self.model.state_dict().items()})


def load_node(msg: Message, context: Context) -> Node:
    """Role, private data and model of this node; fails on a world the server does not run."""
    cfg = RunConfig.from_run_config(context.run_config)  # fills in defaults of keys a run config omits
    world = cfg.world()
    num_classes = int(msg.content[P.CONFIG][P.NUM_CLASSES])
    if num_classes != world.num_classes:
        raise ValueError(f"the server's world has {num_classes} classes, this node's {world.num_classes}")
    role = resolve_role(context.node_config, cfg.layout)
    data = load_client_data(
        world,
        role.modality,
        role.partition,
        role.num_partitions,
        cfg.dirichlet_alpha,
        cfg.local_test_fraction,
        cfg.local_val_fraction,
    )
    spec = ModelSpec(
        num_classes,
        cfg.fusion_dim,
        len(world.tokenizer()),
        cfg.image_size,
        pretrained=cfg.client_pretrained,
        width_scale=cfg.client_width_scale,
    )
    # the same initial weights on every node of an architecture: FedAvg's round 1 sends no arrays
    seed = cfg.seed * 7919 + zlib.crc32(role.architecture.encode())
    node = Node(
        cfg,
        world,
        role,
        parse_node_config(context.node_config).partition_id,
        data,
        build_task_model(role.architecture, spec, seed=seed),
    )
    if MODEL in context.state:
        node.model.load_state_dict(context.state[MODEL].to_torch_state_dict())
    else:  # first message (or a restarted node): join with a model trained on the private data
        warm_up(node)
        node.save(context)
    return node


# ---------------------------------------------------------------- training


@dataclass
class Targets:
    """The kept synthetic rows of a train.distill message, as model inputs and targets."""

    inputs: torch.Tensor
    soft_labels: torch.Tensor | None
    fused: torch.Tensor | None
    weights: torch.Tensor


def train(node: Node, epochs: int, seed: int, targets: Targets | None = None) -> dict[str, float]:
    """`epochs` passes over the private rows; with `targets`, every synthetic row joins the private
    batches `distill-passes` times over the call, one loss per row over the concatenated batch."""
    cfg, model = node.cfg, node.model
    x, y = node.split("train")
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps = epochs * math.ceil(len(y) / cfg.batch_size)
    schedule = [torch.zeros(0, dtype=torch.long)] * steps
    if targets is not None and cfg.distill_passes > 0 and steps:
        m = len(targets.inputs)
        visits = int(round(cfg.distill_passes * m))
        order = torch.cat([torch.randperm(m, generator=generator) for _ in range(math.ceil(cfg.distill_passes))])
        schedule = list(torch.tensor_split(order[:visits], steps))
    totals = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "rep": 0.0}
    model.train()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), cfg.batch_size):
            idx, take = order[start : start + cfg.batch_size], schedule[step]
            batch = x[idx] if len(take) == 0 else torch.cat([x[idx], targets.inputs[take]])
            logits, embedding = model(batch)
            ce = F.cross_entropy(logits[: len(idx)], y[idx], reduction="none")
            total = ce.sum()
            if len(take):
                rows = torch.zeros(len(take))
                if targets.soft_labels is not None:
                    t = cfg.distill_temperature
                    teacher = torch.softmax(targets.soft_labels[take].clamp_min(1e-12).log() / t, dim=-1)
                    student = F.log_softmax(logits[len(idx) :] / t, dim=-1)
                    kl = F.kl_div(student, teacher, reduction="none").sum(-1) * t * t
                    rows = rows + cfg.lambda_kl * kl
                    totals["kl"] += kl.mean().item()
                if targets.fused is not None:
                    projected = model.project(embedding[len(idx) :])
                    rep = 1 - F.cosine_similarity(projected, targets.fused[take], dim=-1)
                    rows = rows + cfg.lambda_rep * rep
                    totals["rep"] += rep.mean().item()
                total = total + (rows * targets.weights[take]).sum()
            loss = total / (len(idx) + len(take))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            totals["loss"] += loss.item()
            totals["ce"] += ce.mean().item()
            step += 1
    means = {k: v / max(step, 1) for k, v in totals.items()}
    return {**means, "visits": float(sum(len(t) for t in schedule))}


def evaluate_split(model: TaskModel, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy); (0, 0) on an empty split."""
    if len(y) == 0:
        return 0.0, 0.0
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + BATCH])[0] for i in range(0, len(y), BATCH)])
    return float((logits.argmax(-1) == y).float().mean()), float(F.cross_entropy(logits, y))


def warm_up(node: Node) -> None:
    """Up to `client-warmup-epochs` epochs on private data, keeping the best model on the node's
    own validation split (stopping after `client-warmup-patience` epochs without improvement)."""
    cfg = node.cfg
    if cfg.client_warmup_epochs == 0:
        return
    val = node.split("val")
    best, best_state, since = -1.0, None, 0
    for epoch in range(cfg.client_warmup_epochs):
        train(node, epochs=1, seed=cfg.seed * 1000 + epoch)
        if len(val[1]) == 0:
            continue  # no validation rows: train every warm-up epoch
        accuracy = evaluate_split(node.model, *val)[0]
        if accuracy > best:
            best, since = accuracy, 0
            best_state = {k: v.detach().clone() for k, v in node.model.state_dict().items()}
        else:
            since += 1
            if since >= cfg.client_warmup_patience:
                break
    if best_state is not None:
        node.model.load_state_dict(best_state)


# ---------------------------------------------------------------- the synthetic pool


def update_pool(context: Context, modality: str, update: ArrayRecord) -> None:
    """Apply a `synthetic` record to this node's copy of its own modality's pool."""
    key = POOL_KEY[modality]
    if key not in update:
        return  # e.g. a sensor node in a run without sensor rows
    rows = update[P.ROWS].numpy().astype(np.int64)
    size = int(update[P.POOL_SIZE].numpy().reshape(-1)[0])
    values = update[key].numpy()
    cached = context.state[POOL][key].numpy() if POOL in context.state else None
    if len(rows) == size:  # the whole pool
        pool = values[np.argsort(rows)]
    elif cached is not None and len(cached) == size:  # regenerated rows only
        # captions are '<U{k}' with the message's longest caption as k: widen, or longer ones are cut
        pool = cached.astype(np.result_type(cached.dtype, values.dtype))
        pool[rows] = values
    else:
        raise RuntimeError(f"got {len(rows)} of {size} synthetic rows but hold no pool of that size")
    context.state[POOL] = ArrayRecord({key: Array(np.ascontiguousarray(pool))})


def pool_inputs(node: Node, context: Context) -> torch.Tensor:
    if POOL not in context.state:
        raise RuntimeError("no synthetic pool cached on this node")
    return node.inputs(context.state[POOL][POOL_KEY[node.role.modality]].numpy())


# ---------------------------------------------------------------- the handlers


@app.query("infer")
def query_infer(msg: Message, context: Context) -> Message:
    node = load_node(msg, context)
    if P.SYNTHETIC in msg.content.array_records:
        update_pool(context, node.role.modality, msg.content[P.SYNTHETIC])
    x = pool_inputs(node, context)
    node.model.eval()
    with torch.no_grad():
        parts = [node.model(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]
        probs = torch.cat([torch.softmax(logits.float(), -1) for logits, _ in parts])
        embedding = torch.cat([node.model.project(emb.float()) for _, emb in parts])
    probs, embedding = probs.numpy(), embedding.numpy()
    entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(-1)
    cfg = node.cfg
    if cfg.dp_noise_multiplier > 0:  # noise from OS entropy, never from the run seed
        probs, entropy, embedding = privatize(
            probs, embedding, cfg.dp_clip, cfg.dp_noise_multiplier, np.random.default_rng()
        )
    dtype = np.dtype(cfg.uplink_dtype)  # computed in float32, cast only for the upload
    inference = ArrayRecord(
        {
            P.PROBS: Array(np.ascontiguousarray(probs, dtype)),
            P.ENTROPY: Array(np.ascontiguousarray(entropy, dtype)),
            P.EMBEDDING: Array(np.ascontiguousarray(embedding, dtype)),
        }
    )
    ask = bool(msg.content[P.CONFIG].get(P.SEND_LABEL_COUNTS, False))
    return Message(RecordDict({P.INFERENCE: inference, P.CLIENT: node.describe(label_counts=ask)}), reply_to=msg)


def distill_targets(node: Node, msg: Message, context: Context) -> Targets | None:
    if P.TARGETS not in msg.content.array_records:
        return None  # train on private data only
    record = msg.content[P.TARGETS]
    rows = torch.as_tensor(record[P.INDICES].numpy()).long()

    def optional(key: str) -> torch.Tensor | None:
        return torch.as_tensor(record[key].numpy()).float() if key in record else None

    weights = optional(P.WEIGHTS)
    return Targets(
        inputs=pool_inputs(node, context)[rows],
        soft_labels=optional(P.SOFT_LABELS),
        fused=optional(P.FUSED) if node.cfg.lambda_rep > 0 else None,
        weights=torch.ones(len(rows)) if weights is None else weights,
    )


@app.train("distill")
def train_distill(msg: Message, context: Context) -> Message:
    node = load_node(msg, context)
    if P.ARRAYS in msg.content.array_records:  # fedavg: the architecture's averaged weights
        node.model.load_state_dict(msg.content[P.ARRAYS].to_torch_state_dict())
    config = msg.content[P.CONFIG]
    targets = distill_targets(node, msg, context)
    stats = train(node, node.cfg.local_epochs, seed=node.cfg.seed * 1000 + int(config[P.SERVER_ROUND]), targets=targets)
    node.save(context)
    metrics = MetricRecord(
        {
            P.TRAIN_LOSS: stats["loss"],
            P.NUM_EXAMPLES: len(node.data.train),
            "ce": stats["ce"],
            "kl": stats["kl"],
            "rep": stats["rep"],
            "synthetic-rows": 0 if targets is None else len(targets.inputs),
            "synthetic-visits": int(stats["visits"]),
        }
    )
    content = RecordDict({P.METRICS: metrics, P.CLIENT: node.describe()})
    if config.get(P.RETURN_ARRAYS, False):
        content[P.ARRAYS] = ArrayRecord({k: v.detach().cpu() for k, v in node.model.state_dict().items()})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    node = load_node(msg, context)
    if P.ARRAYS in msg.content.array_records:
        node.model.load_state_dict(msg.content[P.ARRAYS].to_torch_state_dict())
        node.save(context)
    acc_local, loss_local = evaluate_split(node.model, *node.split("test"))
    acc_global, loss_global = evaluate_split(node.model, *node.split("global_test"))
    metrics = MetricRecord(
        {
            P.ACC_LOCAL: acc_local,
            P.LOSS_LOCAL: loss_local,
            P.ACC_GLOBAL: acc_global,
            P.LOSS_GLOBAL: loss_global,
            P.NUM_EXAMPLES: len(node.data.test),
        }
    )
    return Message(RecordDict({P.METRICS: metrics, P.CLIENT: node.describe()}), reply_to=msg)
