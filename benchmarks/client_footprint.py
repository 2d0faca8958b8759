"""What one client SuperNode costs an edge device, per toy architecture (issue #15, part 6).

    python benchmarks/client_footprint.py                        # every toy architecture, project defaults
    python benchmarks/client_footprint.py --venv /tmp/edge-venv  # children in a client-only venv, and its size
    python benchmarks/client_footprint.py --quick                # one architecture, 2 warm-up epochs: a smoke check

Every figure comes from a fresh child interpreter, so nothing this script imports (it loads the
server's libraries to describe the machine) is counted:

- ``import_s``: wall time of ``import client_app.app`` (median of ``--repeats`` children), and
  ``build_s``: the first ``build_task_model`` of the architecture in that process, which includes
  the libraries only that architecture imports (``transformers`` for resnet, vit and transformer);
- ``rss_import_mb`` / ``rss_build_mb``: the child's peak resident set after the import and after
  building the model (``getrusage(RUSAGE_SELF).ru_maxrss``; median over the repeats);
- ``round``: one client round as a SuperNode runs it, through the ClientApp's own handlers with
  messages built as the server builds them: the node's data and model from its Context plus the
  warm-up training (``ClientNode.from_context``), ``query.infer`` on a synthetic pool of
  ``synthetic-size`` rows (384 by default: images and captions, as round 1 sends both),
  ``train.distill`` with targets for every row, and ``evaluate``; the peak RSS after each phase and
  its wall time;
- ``params`` and ``state_dict_bytes``: the model's parameters and its state dict as ``torch.save``
  writes it (what a node keeps in ``context.state`` between messages, and FedAvg ships);
- ``modules``: which heavy top-level packages (transformers, datasets, ...) the child had loaded.

The run config is the project's defaults (``pyproject.toml``) with ``client-device = "cpu"`` (an
edge CPU), plus ``--run-config`` overrides; the node takes the partition of the default layout's
first slot of that architecture (4 image and 4 text clients share their modality's pool), so
its data is a real node's share. With ``--venv PATH`` the children run with that environment's
Python (a client-only install, README "Edge SuperNodes") and its size on disk is reported; an
architecture whose libraries it lacks is reported with the import error. Results:
``benchmarks/results/client_footprint.json`` (``--quick``: ``client_footprint-quick.json``;
``--label L``: ``client_footprint-L.json``, e.g. one file per environment measured).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Only the standard library at module level: the children run this file, possibly in a minimal venv.
TOY_ARCHITECTURES = ("cnn", "cnn-small", "resnet", "vit", "gru", "transformer", "bow")
QUICK_ARCHITECTURE = "cnn-small"
QUICK_OVERRIDES = {"client-warmup-epochs": 2}
#: Packages an edge client should not need (the server's, the simulation's, the paper world's).
HEAVY = (
    "transformers",
    "tokenizers",
    "datasets",
    "flwr_datasets",
    "pyarrow",
    "pandas",
    "diffusers",
    "peft",
    "ray",
    "matplotlib",
    "scipy",
    "tensorboard",
    "huggingface_hub",
    "safetensors",
    "PIL",
)
RESULT_PREFIX = "CLIENT_FOOTPRINT_RESULT "


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _heavy_loaded() -> list[str]:
    return sorted({name.split(".")[0] for name in sys.modules} & set(HEAVY))


# -- child side ------------------------------------------------------------------------------------


def child_import(architecture: str) -> dict[str, Any]:
    """Import the ClientApp, then build one model of `architecture` (its own imports included)."""
    start = time.perf_counter()
    import client_app.app  # noqa: F401  (the measured import)

    import_s = time.perf_counter() - start
    rss_import, modules_import = _peak_mb(), _heavy_loaded()
    from task_models.registry import ModelSpec, build_task_model
    from worlds import tokenizer

    start = time.perf_counter()
    build_task_model(architecture, ModelSpec(24, 128, tokenizer.vocab_size(), 32), seed=0)
    return {
        "import_s": import_s,
        "build_s": time.perf_counter() - start,
        "rss_import_mb": rss_import,
        "rss_build_mb": _peak_mb(),
        "modules_import": modules_import,
        "modules_build": _heavy_loaded(),
    }


def child_round(architecture: str, run_config: dict[str, Any], partition_id: int, num_partitions: int):
    """One client round through the ClientApp handlers, in this (fresh) process."""
    import io
    from uuid import uuid4

    import numpy as np
    import torch
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from client_app.app import app
    from client_app.node import ClientNode
    from fedmmkt_strategy import protocol as P
    from worlds import domain, sensor

    for name in ("_run_id", "_node_id", "_task_id"):  # Messages outside a Flower runtime need one (as inprocess.py)
        if getattr(TaskIdentity, name, None) is None:
            setattr(TaskIdentity, name, 1)
    phases: dict[str, dict[str, float]] = {"import": {"seconds": 0.0, "peak_rss_mb": _peak_mb()}}
    context = Context(
        run_id=1,
        node_id=100 + partition_id,
        node_config={"partition-id": partition_id, "num-partitions": num_partitions},
        state=RecordDict(),
        run_config=dict(run_config),
    )

    def phase(name: str, start: float) -> None:
        phases[name] = {"seconds": time.perf_counter() - start, "peak_rss_mb": _peak_mb()}

    def send(message_type: str, content: RecordDict) -> Message:
        msg = Message(content, dst_node_id=context.node_id, message_type=message_type)
        msg.metadata.__dict__["_message_id"] = str(uuid4())
        reply = app(msg, context)
        if reply.has_error():
            raise RuntimeError(f"{message_type}: {reply.error.reason}")
        return reply

    start = time.perf_counter()
    node = ClientNode.from_context(context)  # data, model and warm-up; kept in context.state
    phase("data + model + warm-up", start)

    n, c = int(run_config["synthetic-size"]), node.world.num_classes
    labels = np.arange(n) % c
    samples = domain.generate(labels, seed=9, image_size=int(run_config["image-size"]))
    pool = {
        P.IMAGES: Array(samples.images),
        P.CAPTIONS: Array(np.array([caps[0] for caps in samples.captions])),
        P.ROWS: Array(np.arange(n, dtype=np.int64)),
        P.POOL_SIZE: Array(np.array([n], dtype=np.int64)),
    }
    if node.role.modality == "sensor":
        pool[P.SENSORS] = Array(sensor.readings(labels, seed=9))
    config = {P.SERVER_ROUND: 1, P.NUM_CLASSES: c, P.CLASS_NAMES: list(node.world.class_names)}

    start = time.perf_counter()
    query = RecordDict({P.SYNTHETIC: ArrayRecord(pool), P.CONFIG: ConfigRecord({**config, P.SEND_LABEL_COUNTS: True})})
    probs = send(P.QUERY_INFER, query).content[P.INFERENCE][P.PROBS].numpy().astype(np.float32)
    phase("query.infer", start)

    rng = np.random.default_rng(0)
    fused = rng.standard_normal((n, int(run_config["fusion-dim"]))).astype(np.float32)
    targets = ArrayRecord(
        {
            P.INDICES: Array(np.arange(n, dtype=np.int64)),
            P.SOFT_LABELS: Array(probs / probs.sum(1, keepdims=True)),
            P.FUSED: Array(fused / np.linalg.norm(fused, axis=1, keepdims=True)),
            P.WEIGHTS: Array(np.ones(n, dtype=np.float32)),
        }
    )
    start = time.perf_counter()
    send(P.TRAIN_DISTILL, RecordDict({P.TARGETS: targets, P.CONFIG: ConfigRecord(config)}))
    phase("train.distill", start)

    start = time.perf_counter()
    metrics = send(P.EVALUATE, RecordDict({P.CONFIG: ConfigRecord(config)})).content[P.METRICS]
    phase("evaluate", start)

    buffer = io.BytesIO()
    torch.save(node.cpu_state(), buffer)
    return {
        "modality": node.role.modality,
        "partition": f"{node.role.partition}/{node.role.num_partitions}",
        "train_examples": len(node.data.train),
        "params": sum(p.numel() for p in node.model.parameters()),
        "state_dict_bytes": buffer.getbuffer().nbytes,
        "acc_local": float(metrics[P.ACC_LOCAL]),
        "phases": phases,
        "peak_rss_mb": _peak_mb(),
        "modules": _heavy_loaded(),
    }


# -- parent side -----------------------------------------------------------------------------------


def run_child(python: str, args: list[str]) -> dict[str, Any]:
    """Run this file as a child; its result, or the error it ended with."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(
        [python, str(Path(__file__).resolve()), "--child", *args], capture_output=True, text=True, env=env, check=False
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith(RESULT_PREFIX)), None)
    if proc.returncode != 0 or line is None:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]}
    return json.loads(line[len(RESULT_PREFIX) :])


def disk_usage_mb(path: Path) -> float:
    """Space `path` takes on disk (allocated blocks, hard links once), as ``du -s`` counts it."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total / 1024**2


def node_slot(run_config: dict[str, Any], architecture: str) -> tuple[int, int]:
    """(partition-id, num-partitions) of a node running `architecture`: its first slot in the layout."""
    from task_models.layout import parse_layout

    layout = parse_layout(run_config["client-layout"])
    slots = [i for i, entry in enumerate(layout) if entry.architecture == architecture]
    if not slots:
        raise SystemExit(f"{architecture!r} is not in client-layout {run_config['client-layout']!r}; pass --run-config")
    return slots[0], len(layout)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ARCHITECTURE} only, {QUICK_OVERRIDES}")
    parser.add_argument("--architectures", default=",".join(TOY_ARCHITECTURES), help="comma-separated registry names")
    parser.add_argument("--repeats", type=int, default=3, help="import children per architecture (median)")
    parser.add_argument("--venv", type=Path, help="a client-only environment: run the children with its python")
    parser.add_argument("--run-config", default="", help="overrides, 'key=value ...'")
    parser.add_argument(
        "--label", default="", help="results file suffix: client_footprint-LABEL.json (e.g. one per environment)"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, architecture, *rest = args.child
        if mode == "import":
            out = child_import(architecture)
        else:
            out = child_round(architecture, json.loads(rest[0]), int(rest[1]), int(rest[2]))
        print(RESULT_PREFIX + json.dumps(out), flush=True)
        return out

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_common import parse_overrides, project_defaults, write_result

    architectures = [QUICK_ARCHITECTURE] if args.quick else [a.strip() for a in args.architectures.split(",")]
    run_config = {**project_defaults(), "client-device": "cpu", **parse_overrides(args.run_config)}
    if args.quick:
        run_config.update(QUICK_OVERRIDES)
    python = str(args.venv / "bin" / "python") if args.venv else sys.executable
    rows = []
    for arch in architectures:
        partition_id, num_partitions = node_slot(run_config, arch)
        imports = [run_child(python, ["import", arch]) for _ in range(max(1, args.repeats))]
        ok = [r for r in imports if "error" not in r]
        row: dict[str, Any] = {"architecture": arch}
        if ok:
            for key in ("import_s", "build_s", "rss_import_mb", "rss_build_mb"):
                row[key] = statistics.median(r[key] for r in ok)
            row["modules_import"], row["modules_build"] = ok[0]["modules_import"], ok[0]["modules_build"]
        else:
            row["import_error"] = imports[0]["error"]
        row["round"] = run_child(
            python, ["round", arch, json.dumps(run_config), str(partition_id), str(num_partitions)]
        )
        rows.append(row)
        r = row["round"]
        if "error" in r or "import_error" in row:
            print(f"{arch:12s} failed: {row.get('import_error') or r.get('error')}")
            continue
        print(
            f"{arch:12s} import {row['import_s']:.2f} s (+ model {row['build_s']:.2f} s), "
            f"RSS {row['rss_import_mb']:.0f} MB after import, {r['peak_rss_mb']:.0f} MB peak in a round; "
            f"{r['params']:,} params, state dict {r['state_dict_bytes'] / 1024**2:.2f} MB; "
            f"heavy modules: {', '.join(r['modules']) or 'none'}"
        )
        print("             " + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in r["phases"].items() if k != "import"))
    result: dict[str, Any] = {
        "python": python,
        "run_config": {k: run_config[k] for k in sorted(run_config)},
        "synthetic_rows": int(run_config["synthetic-size"]),
        "rows": rows,
        "this_env": {"prefix": sys.prefix, "size_mb": disk_usage_mb(Path(sys.prefix))},
    }
    if args.venv:
        result["venv"] = {"path": str(args.venv), "size_mb": disk_usage_mb(args.venv)}
        print(f"client venv {args.venv}: {result['venv']['size_mb']:.0f} MB on disk")
    print(f"this environment {sys.prefix}: {result['this_env']['size_mb']:.0f} MB on disk")
    write_result("client_footprint" + (f"-{args.label}" if args.label else ""), result, args.quick)
    return result


if __name__ == "__main__":
    main()
