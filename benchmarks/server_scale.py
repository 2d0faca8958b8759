"""Server-side cost of LabVote + contrastive aggregation + cross-attention fusion at scale
(issue 7, item 4): wall time and peak memory for N synthetic samples x K clients.

    python benchmarks/server_scale.py --samples 50000 --clients 100   # the issue's size (target < 8 GB peak)
    python benchmarks/server_scale.py --quick                         # 2,000 x 10, 5 fusion steps: a smoke check

The inputs are random but valid client uploads (probabilities, natural-log entropies and
L2-normalised projected embeddings, half the clients image, half text), held as the strategy holds
them: one flwr `Array` per reply and key (serialised bytes), turned into stacked numpy arrays by
``.numpy()`` when a step needs them, as `FedMMKTStrategy._stack` does; the embeddings of each
modality are stacked and cut to the kept rows before the contrastive score, as `FedMMKTStrategy.fuse`
does. So the peak includes the uploads themselves (K x N x (C + 1 + d) float32) and the copies the
server makes of them, not only the algorithm's working memory.

Peak memory is measured honestly: the work runs in a fresh child process, and its peak resident
set (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` after it exits; RSS covers torch's allocations,
which tracemalloc would miss) is what is reported. The child also reports its RSS before and its
peak-so-far after each step, to show which step sets the peak; the interpreter and torch alone
account for the "baseline" figure. The contrastive score is computed within blocks of
``contrastive-batch`` rows and in row chunks, so no N x N matrix is materialised (the reference
CreamFL code builds one per client, which at 50,000 rows is 10 GB each).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tomllib

#: Sizes: [full] (the command-line defaults) and [quick]; presets/bench-server-scale.toml, read
#: with tomllib because the child must not import the project before it measures.
SIZES = tomllib.loads((Path(__file__).resolve().parents[1] / "presets" / "bench-server-scale.toml").read_text())
FULL, QUICK = SIZES["full"], SIZES["quick"]
TARGET_GB = 8.0
RESULT_PREFIX = "SERVER_SCALE_RESULT "


def _rss_gb() -> float:
    """Current resident set of this process, GB (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 1e9


def _peak_gb() -> float:
    """Peak resident set of this process so far, GB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def child(samples: int, clients: int, classes: int, dim: int, contrastive_batch: int, fusion_steps: int) -> dict:
    """The measured work, in the child process; returns per-step seconds and memory."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from flwr.app import Array

    from fedmmkt_strategy.steps.fusion import CrossModalFusion, aggregate, contrastive_weights, fuse, train_fusion
    from fedmmkt_strategy.steps.labvote import labvote

    n, k, c, d = samples, clients, classes, dim
    steps: dict[str, dict[str, float]] = {}
    baseline = _rss_gb()

    def step(name: str, start: float, rss_before: float) -> None:
        steps[name] = {"seconds": time.perf_counter() - start, "rss_before_gb": rss_before, "peak_after_gb": _peak_gb()}
        print(f"  {name:28s} {steps[name]['seconds']:8.2f} s, peak so far {steps[name]['peak_after_gb']:.2f} GB")

    t, rss = time.perf_counter(), _rss_gb()
    rng = np.random.default_rng(0)
    uploads = []  # one reply's arrays per client, serialised as Flower holds them
    for _ in range(k):
        logits = rng.normal(0, 3, (n, c)).astype(np.float32)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(-1)
        emb = rng.standard_normal((n, d), dtype=np.float32)
        emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
        uploads.append({"probs": Array(probs), "entropy": Array(entropy.astype(np.float32)), "embedding": Array(emb)})
        del logits, probs, entropy, emb
    step("uploads (inputs)", t, rss)

    def stack(key: str, nodes: range) -> np.ndarray:
        return np.stack([uploads[i][key].numpy() for i in nodes])

    t, rss = time.perf_counter(), _rss_gb()
    probs, entropy = stack("probs", range(k)), stack("entropy", range(k))
    vote = labvote(probs, entropy, beta=0.5)
    kept = vote.kept_indices
    del probs, entropy
    step("LabVote", t, rss)

    t, rss = time.perf_counter(), _rss_gb()
    tokens = {}
    anchor_rng = torch.Generator().manual_seed(1)
    for modality, nodes in (("image", range(k // 2)), ("text", range(k // 2, k))):
        reps = torch.as_tensor(stack("embedding", nodes)[:, kept])
        anchors = F.normalize(torch.randn(len(kept), d, generator=anchor_rng), dim=-1)
        alpha = contrastive_weights(reps, anchors, 0.1, contrastive_batch)
        tokens[modality] = F.normalize(aggregate(reps, alpha), dim=-1)
        del reps, alpha
    step("contrastive aggregation", t, rss)

    t, rss = time.perf_counter(), _rss_gb()
    module = CrossModalFusion(list(tokens), d, c)
    labels = torch.as_tensor(vote.labels[kept])
    train_fusion(module, tokens, labels, torch.as_tensor(vote.confidence[kept]), steps=fusion_steps)
    fuse(module, tokens)
    step(f"cross-attention fusion ({fusion_steps} steps + fuse)", t, rss)
    return {
        "kept": int(len(kept)),
        "steps": steps,
        "baseline_rss_gb": baseline,
        "peak_self_gb": _peak_gb(),
        "torch_threads": torch.get_num_threads(),
    }


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """Run the work in a fresh interpreter; its result plus its peak RSS as the kernel saw it."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child"]
    for key in ("samples", "clients", "classes", "dim", "contrastive_batch", "fusion_steps"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    lines = proc.stdout.splitlines()
    print("\n".join(line for line in lines if not line.startswith(RESULT_PREFIX)))
    if proc.returncode != 0:
        raise SystemExit(f"the measured child process failed with exit code {proc.returncode}")
    result = json.loads(next(line for line in lines if line.startswith(RESULT_PREFIX))[len(RESULT_PREFIX) :])
    # RUSAGE_CHILDREN's ru_maxrss is the largest child so far; the child is the only one this process ran
    result["peak_rss_gb"] = peak_kib * 1024 / 1e9 if peak_kib > before else result["peak_self_gb"]
    result["child_wall_s"] = wall
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke sizes {QUICK}")
    parser.add_argument("--samples", type=int, default=FULL["samples"])
    parser.add_argument("--clients", type=int, default=FULL["clients"])
    parser.add_argument("--classes", type=int, default=FULL["classes"])
    parser.add_argument("--dim", type=int, default=FULL["dim"])
    parser.add_argument("--contrastive-batch", type=int, default=FULL["contrastive_batch"])
    parser.add_argument("--fusion-steps", type=int, default=FULL["fusion_steps"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.child:
        out = child(args.samples, args.clients, args.classes, args.dim, args.contrastive_batch, args.fusion_steps)
        print(RESULT_PREFIX + json.dumps(out), flush=True)
        return out

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_common import write_result

    n, k, c, d = args.samples, args.clients, args.classes, args.dim
    uploads_gb = k * n * (c + 1 + d) * 4 / 1e9
    print(f"{n} samples x {k} clients (half image, half text), C={c}, d={d}; uploads {uploads_gb:.2f} GB float32")
    result = run_child(args)
    total = sum(s["seconds"] for name, s in result["steps"].items() if name != "uploads (inputs)")
    print(f"kept {result['kept']} of {n} rows")
    print(f"LabVote + contrastive aggregation + fusion: {total:.1f} s")
    print(
        f"peak RSS {result['peak_rss_gb']:.2f} GB (baseline: interpreter + torch {result['baseline_rss_gb']:.2f} GB), "
        f"target < {TARGET_GB:.0f} GB: {'met' if result['peak_rss_gb'] < TARGET_GB else 'NOT met'}"
    )
    print(
        f"a naive N x N float32 matrix per client would be {n * n * 4 / 1e9:.1f} GB "
        f"({math.ceil(n / args.contrastive_batch)} blocks of {args.contrastive_batch} rows used instead)"
    )
    result.update(
        {
            "samples": n,
            "clients": k,
            "classes": c,
            "dim": d,
            "contrastive_batch": args.contrastive_batch,
            "fusion_steps": args.fusion_steps,
            "uploads_gb": uploads_gb,
            "server_steps_s": total,
            "target_gb": TARGET_GB,
            "target_met": result["peak_rss_gb"] < TARGET_GB,
            "naive_nxn_gb_per_client": n * n * 4 / 1e9,
        }
    )
    write_result("server_scale", result, args.quick)
    return result


if __name__ == "__main__":
    main()
