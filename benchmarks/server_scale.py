"""Server-side cost of LabVote + contrastive aggregation + cross-attention fusion at scale.

Random but valid client outputs (probabilities, entropies, L2-normalised embeddings) for
N synthetic samples and K clients (half image, half text). Prints wall time per step and the
process's peak resident memory. Example (issue 7's target: 50,000 x 100 under 8 GB):

    python benchmarks/server_scale.py --samples 50000 --clients 100
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F

from fedmmkt_strategy.fusion import CrossModalFusion, aggregate, contrastive_weights, fuse, train_fusion
from fedmmkt_strategy.labvote import labvote


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--classes", type=int, default=24)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--contrastive-batch", type=int, default=1024)
    parser.add_argument("--fusion-steps", type=int, default=50)
    args = parser.parse_args()
    n, k, c, d = args.samples, args.clients, args.classes, args.dim
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (k, n, c)).astype(np.float32)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(-1)
    del logits
    print(f"inputs: {n} samples x {k} clients, C={c}, d={d}; peak RSS so far {peak_rss_gb():.2f} GB")

    t = time.perf_counter()
    vote = labvote(probs, entropy, beta=0.5)
    t_vote = time.perf_counter() - t
    kept = vote.kept_indices
    print(f"LabVote: {t_vote:.2f} s, kept {len(kept)} of {n}")
    del probs, entropy

    t = time.perf_counter()
    tokens = {}
    for m, clients in (("image", k // 2), ("text", k - k // 2)):
        reps = F.normalize(torch.randn(clients, len(kept), d), dim=-1)
        anchors = F.normalize(torch.randn(len(kept), d), dim=-1)
        alpha = contrastive_weights(reps, anchors, 0.1, args.contrastive_batch)
        tokens[m] = F.normalize(aggregate(reps, alpha), dim=-1)
        del reps, alpha
    t_contrastive = time.perf_counter() - t
    print(f"contrastive aggregation: {t_contrastive:.2f} s")

    t = time.perf_counter()
    module = CrossModalFusion(list(tokens), d, c)
    labels = torch.as_tensor(vote.labels[kept])
    train_fusion(module, tokens, labels, torch.as_tensor(vote.confidence[kept]), steps=args.fusion_steps)
    fuse(module, tokens)
    t_fusion = time.perf_counter() - t
    print(f"cross-attention fusion ({args.fusion_steps} steps + fuse): {t_fusion:.2f} s")
    total = t_vote + t_contrastive + t_fusion
    print(f"total {total:.1f} s; peak RSS {peak_rss_gb():.2f} GB; threads {torch.get_num_threads()}")
    print(f"naive N x N float32 matrix per client would be {n * n * 4 / 1e9:.1f} GB "
          f"({math.ceil(n / args.contrastive_batch)} blocks of {args.contrastive_batch} used instead)")


if __name__ == "__main__":
    main()
