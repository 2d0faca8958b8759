"""Communication per client per round: FedMMKT's uplink and downlink for every registered task
model, against what a FedAvg round of the same model sends (issue 7, item 3).

    python benchmarks/communication.py           # toy defaults + the paper presets, every model at real size
    python benchmarks/communication.py --quick   # toy defaults, the cheap models and resnet18 only

Nothing is trained. Each model is built from config (random init; the paper models resnet18, vit-s
and bert at real size, ``client-width-scale`` 1) to count its parameters and its state dict. The
messages are the real ones: RecordDicts with the record keys of `fedmmkt_strategy.protocol` and
the shapes the strategy and the ClientApp use (`FedMMKTStrategy._pool_update`, `distill_targets`,
`client_app.app.query_infer`, `PerArchitectureFedAvg`), built from random arrays of the right
dtype and shape. Each is counted two ways:

- ``payload``: the project's own accounting (`accounting.payload_bytes`, what metrics.json reports);
- ``serialised``: the size of the whole Flower Message as protobuf (`message_to_proto`): payload
  plus numpy headers, record and message framing and metadata; only gRPC framing is missing.

FedMMKT per client per round:
- uplink: the ``query.infer`` reply, N_syn x (C + 1 + d) values (probabilities, entropy, embedding)
  plus the client record; plus the small metric replies of ``train.distill`` and ``evaluate``.
  Reported for both ``uplink-dtype`` values: float32 (the default; keys without a suffix) and
  float16 (keys ending in ``_float16``, half the arrays; what the paper presets use);
- downlink, round 1: the whole synthetic pool (uint8 images and captions; the server does not yet
  know the node's modality, so both), the distillation targets (indices, soft labels, fused vectors
  of the kept rows) and the configs; later rounds: only the refreshed rows of the node's modality,
  plus targets and configs.
FedAvg per round: canonical, the parameters as float32 once each way; as this project's
per-architecture FedAvg sends it, the state dict (with buffers) down with train and with evaluate,
and up with the train reply.

The kept share of LabVote (rows that get targets) is ``--kept-fraction`` (default 1: an upper bound).
"""

from __future__ import annotations

import argparse
import gc
from typing import Any

import numpy as np
import torch
from bench_common import parse_overrides, preset_config, project_defaults, write_result
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.serde import message_to_proto

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.federation.accounting import payload_bytes
from fedmmkt_strategy.generative.synthesis import prompts_for_classes
from fedmmkt_strategy.runs.inprocess import ensure_task_identity
from task_models.registry import ModelSpec, available_models, build_task_model, model_modality
from worlds import domain
from worlds.tokenizer import build_tokenizer

#: Class counts of the paper presets' datasets (their worlds need the dataset itself to say so).
PAPER_CLASSES = {"paper-flowers": 102, "paper-food101": 101}
#: bert-base-uncased, the paper presets' ``text-tokenizer``.
BERT_VOCAB = 30522
PAPER_MODELS = ("resnet18", "vit-s", "bert")
QUICK_MODELS = ("cnn", "cnn-small", "resnet", "vit", "gru", "bow", "transformer", "resnet18")
#: The ratio issue 7 asks for: FedMMKT's uplink at most 1/50 of FedAvg's for a ResNet-18-class model.
TARGET_RATIO = 50.0
#: The `uplink-dtype` values, with the bytes of one value.
UPLINK_DTYPES = {"float32": 4, "float16": 2}


def serialised_bytes(content: RecordDict, reply_to: Message | None = None, message_type: str = P.QUERY_INFER) -> int:
    """Bytes of the whole Flower Message (metadata + records) as protobuf."""
    if reply_to is None:
        msg = Message(content, dst_node_id=1, message_type=message_type, group_id="1")
    else:
        msg = Message(content, reply_to=reply_to)
    return message_to_proto(msg).ByteSize()


def both(content: RecordDict, reply_to: Message | None = None, message_type: str = P.QUERY_INFER) -> dict[str, int]:
    return {"payload": payload_bytes(content), "serialised": serialised_bytes(content, reply_to, message_type)}


def add(*sizes: dict[str, int]) -> dict[str, int]:
    return {key: sum(s[key] for s in sizes) for key in ("payload", "serialised")}


def client_record(modality: str, architecture: str) -> ConfigRecord:
    """The CLIENT record every reply carries (`ClientNode.describe`)."""
    return ConfigRecord(
        {
            P.MODALITY: modality,
            P.ARCHITECTURE: architecture,
            P.PARTITION: 0,
            P.NUM_PARTITIONS: 4,
            P.PARTITION_ID: 0,
        }
    )


def pool_update(rows: np.ndarray, pool_size: int, image_size: int, captions: list[str], modalities: set[str]):
    """The SYNTHETIC record `FedMMKTStrategy._pool_update` sends: rows, pool size, uint8 images
    and/or captions (fixed-width numpy unicode, as the strategy builds them)."""
    record = ArrayRecord({P.ROWS: Array(rows.astype(np.int64)), P.POOL_SIZE: Array(np.array([pool_size], np.int64))})
    if "image" in modalities:
        images = np.random.default_rng(0).integers(0, 256, (len(rows), image_size, image_size, 3), dtype=np.uint8)
        record[P.IMAGES] = Array(images)
    if "text" in modalities:
        record[P.CAPTIONS] = Array(np.array([captions[i] for i in rows]))
    return record


def inference_reply(n: int, c: int, d: int, dtype: str, client: ConfigRecord, rng: np.random.Generator) -> RecordDict:
    """The ``query.infer`` reply `client_app.app.query_infer` sends with ``uplink-dtype = dtype``."""
    probs = rng.random((n, c), dtype=np.float32)
    arrays = {
        P.PROBS: probs / probs.sum(1, keepdims=True),
        P.ENTROPY: rng.random(n, dtype=np.float32),
        P.EMBEDDING: rng.standard_normal((n, d), dtype=np.float32),
    }
    record = ArrayRecord({k: Array(np.ascontiguousarray(v, np.dtype(dtype))) for k, v in arrays.items()})
    return RecordDict({P.INFERENCE: record, P.CLIENT: client})


def fedmmkt_bytes(
    modality: str, architecture: str, n: int, c: int, d: int, image_size: int, refresh: float, kept: float
) -> dict[str, Any]:
    """Bytes one client of `modality` sends and receives in round 1 and in a later round (uplink in
    both `uplink-dtype` values: float32 unsuffixed, float16 with ``_float16``)."""
    rng = np.random.default_rng(0)
    captions = prompts_for_classes(rng.integers(0, domain.NUM_CLASSES, n), 1)
    config = RecordDict({P.CONFIG: ConfigRecord({P.SERVER_ROUND: 1})})
    query_first = RecordDict(
        {P.SYNTHETIC: pool_update(np.arange(n), n, image_size, captions, {"image", "text"}), **config}
    )
    refreshed = np.sort(rng.choice(n, int(np.rint(refresh * n)), replace=False))
    query_later = RecordDict({P.SYNTHETIC: pool_update(refreshed, n, image_size, captions, {modality}), **config})
    m = int(np.rint(kept * n))
    soft = rng.random((m, c), dtype=np.float32)
    targets = ArrayRecord(
        {
            P.INDICES: Array(np.arange(m, dtype=np.int64)),
            P.SOFT_LABELS: Array(soft / soft.sum(1, keepdims=True)),
            P.FUSED: Array(rng.standard_normal((m, d), dtype=np.float32)),
        }
    )
    distill = RecordDict({P.CONFIG: ConfigRecord({P.SERVER_ROUND: 1, P.RETURN_ARRAYS: False}), P.TARGETS: targets})
    evaluate = RecordDict({P.CONFIG: ConfigRecord({P.SERVER_ROUND: 1})})
    train_metrics = {P.TRAIN_LOSS: 0.5, P.NUM_EXAMPLES: 400, "ce": 0.4, "kl": 0.1, "rep": 0.1}
    train_reply = RecordDict({P.METRICS: MetricRecord(train_metrics), P.CLIENT: client_record(modality, architecture)})
    eval_metrics = {P.ACC_LOCAL: 0.9, P.LOSS_LOCAL: 0.3, P.ACC_GLOBAL: 0.8, P.LOSS_GLOBAL: 0.5, P.NUM_EXAMPLES: 100}
    eval_reply = RecordDict({P.METRICS: MetricRecord(eval_metrics), P.CLIENT: client_record(modality, architecture)})

    query_msg = Message(query_first, dst_node_id=1, message_type=P.QUERY_INFER, group_id="1")
    small_replies = add(both(train_reply, query_msg), both(eval_reply, query_msg))
    uplink: dict[str, Any] = {}
    for dtype, width in UPLINK_DTYPES.items():
        suffix = "" if dtype == "float32" else f"_{dtype}"
        inference = inference_reply(n, c, d, dtype, client_record(modality, architecture), rng)
        up_query = both(inference, query_msg)
        uplink[f"uplink_formula_bytes{suffix}"] = n * (c + 1 + d) * width
        uplink[f"uplink_query_reply{suffix}"] = up_query
        uplink[f"uplink_per_round{suffix}"] = add(up_query, small_replies)
    down_targets = both(distill, message_type=P.TRAIN_DISTILL)
    down_eval = both(evaluate, message_type=P.EVALUATE)
    down_first = add(both(query_first), down_targets, down_eval)
    down_later = add(both(query_later), down_targets, down_eval)
    caption_utf8 = sum(len(s.encode()) for s in captions)
    naive = n * image_size * image_size * 3 * 4 + caption_utf8 + down_targets["payload"]
    return {
        **uplink,
        "downlink_round1": down_first,
        "downlink_later_round": down_later,
        "downlink_targets": down_targets,
        "refreshed_rows": int(len(refreshed)),
        "kept_rows": m,
        "pool_images_uint8_bytes": n * image_size * image_size * 3,
        "pool_captions_numpy_bytes": len(query_first[P.SYNTHETIC][P.CAPTIONS].data),
        "pool_captions_utf8_bytes": caption_utf8,
        # what resending the pool every round, images as float32, would cost instead
        "downlink_naive_every_round_bytes": naive,
    }


def fedavg_bytes(model: torch.nn.Module, modality: str, architecture: str) -> dict[str, Any]:
    """FedAvg's bytes per round: canonical (float32 parameters each way) and as this project sends them."""
    params = sum(p.numel() for p in model.parameters())
    state = ArrayRecord(model.state_dict())
    config = ConfigRecord({P.SERVER_ROUND: 2, P.RETURN_ARRAYS: True})
    train_down = RecordDict({P.CONFIG: config, P.ARRAYS: state})
    train_msg = Message(train_down, dst_node_id=1, message_type=P.TRAIN_DISTILL, group_id="2")
    down_train = both(train_down, message_type=P.TRAIN_DISTILL)
    metrics = MetricRecord({P.TRAIN_LOSS: 0.5, P.NUM_EXAMPLES: 400, "ce": 0.4, "kl": 0.0, "rep": 0.0})
    up = both(
        RecordDict({P.METRICS: metrics, P.CLIENT: client_record(modality, architecture), P.ARRAYS: state}), train_msg
    )
    down_eval = both(RecordDict({P.CONFIG: ConfigRecord({P.SERVER_ROUND: 2}), P.ARRAYS: state}), None, P.EVALUATE)
    result = {
        "parameters": params,
        "state_dict_values": sum(v.numel() for v in model.state_dict().values()),
        "canonical_bytes_each_way": 4 * params,
        "project_uplink_per_round": up,
        "project_downlink_per_round": add(down_train, down_eval),
    }
    del state, train_down, train_msg
    gc.collect()
    return result


def setting(name: str, run_config: dict[str, Any], num_classes: int, vocab: int) -> dict[str, Any]:
    """The sizes one world/preset runs at."""
    config = RunConfig.from_run_config(run_config)
    return {
        "name": name,
        "synthetic_size": config.synthetic_size,
        "refresh_fraction": config.refresh_fraction,
        "fusion_dim": config.fusion_dim,
        "num_classes": num_classes,
        "image_size": config.image_size,
        "vocab_size": vocab,
        "uplink_dtype": config.uplink_dtype,
    }


def measure(settings: list[dict[str, Any]], models_of: dict[str, tuple[str, ...]], kept: float) -> list[dict]:
    """One row per (setting, model)."""
    ensure_task_identity()
    rows = []
    for s in settings:
        for arch in models_of[s["name"]]:
            modality = model_modality(arch)
            spec = ModelSpec(s["num_classes"], s["fusion_dim"], s["vocab_size"], s["image_size"])
            model = build_task_model(arch, spec, seed=0)
            fedavg = fedavg_bytes(model, modality, arch)
            del model
            gc.collect()
            fed = fedmmkt_bytes(
                modality,
                arch,
                s["synthetic_size"],
                s["num_classes"],
                s["fusion_dim"],
                s["image_size"],
                s["refresh_fraction"],
                kept,
            )
            ratio = fedavg["canonical_bytes_each_way"] / fed["uplink_per_round"]["serialised"]
            ratio16 = fedavg["canonical_bytes_each_way"] / fed["uplink_per_round_float16"]["serialised"]
            rows.append(
                {
                    "setting": s["name"],
                    "model": arch,
                    "modality": modality,
                    **{"fedavg": fedavg, "fedmmkt": fed},
                    "uplink_ratio_fedavg_over_fedmmkt": ratio,
                    "uplink_ratio_fedavg_over_fedmmkt_float16": ratio16,
                    "uplink_ratio_project_fedavg_over_fedmmkt": fedavg["project_uplink_per_round"]["serialised"]
                    / fed["uplink_per_round"]["serialised"],
                    "downlink_round1_ratio": fedavg["canonical_bytes_each_way"] / fed["downlink_round1"]["serialised"],
                    "downlink_later_ratio": fedavg["canonical_bytes_each_way"]
                    / fed["downlink_later_round"]["serialised"],
                }
            )
            print_row(rows[-1])
    return rows


def _mb(value: float) -> str:
    return f"{value / 1e6:9.3f}"


def print_header() -> None:
    print(
        f"{'setting':14s} {'model':12s} {'params':>11s} {'FedAvg MB':>9s} {'up MB':>9s} {'formula':>9s} "
        f"{'up ratio':>8s} {'up16 MB':>9s} {'ratio16':>8s} {'dn1 MB':>9s} {'dnN MB':>9s} {'naive MB':>9s}"
    )


def print_row(row: dict[str, Any]) -> None:
    """FedAvg MB: float32 parameters one way; up: FedMMKT's serialised uplink per round (float32;
    up16/ratio16: with uplink-dtype float16); dn1/dnN: FedMMKT's downlink in round 1 / later
    rounds; naive: the float32 pool every round."""
    fa, fm = row["fedavg"], row["fedmmkt"]
    print(
        f"{row['setting']:14s} {row['model']:12s} {fa['parameters']:11,d} {_mb(fa['canonical_bytes_each_way'])} "
        f"{_mb(fm['uplink_per_round']['serialised'])} {_mb(fm['uplink_formula_bytes'])} "
        f"{row['uplink_ratio_fedavg_over_fedmmkt']:8.1f} {_mb(fm['uplink_per_round_float16']['serialised'])} "
        f"{row['uplink_ratio_fedavg_over_fedmmkt_float16']:8.1f} {_mb(fm['downlink_round1']['serialised'])} "
        f"{_mb(fm['downlink_later_round']['serialised'])} {_mb(fm['downlink_naive_every_round_bytes'])}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"toy setting only, models {', '.join(QUICK_MODELS)}")
    parser.add_argument("--models", help="comma-separated registry names for the toy setting (default: all)")
    parser.add_argument("--kept-fraction", type=float, default=1.0, help="share of rows LabVote keeps (default 1)")
    parser.add_argument("--run-config", default="", help="overrides of the toy setting, 'key=value ...'")
    args = parser.parse_args(argv)
    toy_config = {**project_defaults(), **parse_overrides(args.run_config)}
    settings = [setting("toy-default", toy_config, domain.NUM_CLASSES, len(build_tokenizer()))]
    toy_models = args.models.split(",") if args.models else (QUICK_MODELS if args.quick else available_models())
    models_of = {"toy-default": tuple(toy_models)}
    if not args.quick:
        for preset, classes in PAPER_CLASSES.items():
            settings.append(setting(preset, preset_config(preset), classes, BERT_VOCAB))
            models_of[preset] = PAPER_MODELS
    print_header()
    rows = measure(settings, models_of, args.kept_fraction)
    targets = {
        r["setting"]: {
            "model": "resnet18",
            "uplink_ratio": r["uplink_ratio_fedavg_over_fedmmkt"],
            "uplink_ratio_float16": r["uplink_ratio_fedavg_over_fedmmkt_float16"],
            "target": TARGET_RATIO,
            "met": r["uplink_ratio_fedavg_over_fedmmkt"] >= TARGET_RATIO,
            "met_float16": r["uplink_ratio_fedavg_over_fedmmkt_float16"] >= TARGET_RATIO,
            "preset_uplink_dtype": next(s["uplink_dtype"] for s in settings if s["name"] == r["setting"]),
        }
        for r in rows
        if r["model"] == "resnet18"
    }
    for name, t in targets.items():
        state, state16 = ("met" if t[k] else "NOT met" for k in ("met", "met_float16"))
        print(
            f"{name}: FedAvg/FedMMKT uplink for resnet18 = {t['uplink_ratio']:.1f} in float32 (target >= 50: {state}), "
            f"{t['uplink_ratio_float16']:.1f} in float16 ({state16}); the setting uses {t['preset_uplink_dtype']}"
        )
    result = {"settings": settings, "kept_fraction": args.kept_fraction, "rows": rows, "resnet18_target": targets}
    write_result("communication", result, args.quick)
    return result


if __name__ == "__main__":
    main()
