"""Compare vote rules offline on recorded rounds (see dump_votes.py): how often each rule's label
matches what the image depicts (judge), how much of the pool it keeps, and how much probability
its soft label puts on the depicted class.

    python experiments/vote_rules.py /tmp/votes
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fedmmkt_strategy.steps.labvote import labvote, normalised_entropy, plain_average


def prompt_prior(probs, entropy, prompt, weight, beta=1.0):
    k, n, c = probs.shape
    h = normalised_entropy(entropy, c)
    w = np.where(h <= beta, 1 - h, 0.0)
    onehot = np.eye(c)[prompt]
    q = np.einsum("kn,knc->nc", w, probs) + weight * k * onehot
    return q / q.sum(1, keepdims=True)


def precision_weighted(probs, entropy, prompt, beta=1.0, smoothing=1.0):
    """Each vote weighted by how often that client's predictions of that class match the prompt."""
    k, n, c = probs.shape
    pred = probs.argmax(2)  # [K, N]
    h = normalised_entropy(entropy, c)
    w = np.where(h <= beta, 1 - h, 0.0)
    hits = np.zeros((k, c))
    total = np.zeros((k, c))
    for j in range(k):
        np.add.at(total[j], pred[j], w[j])
        np.add.at(hits[j], pred[j], w[j] * (pred[j] == prompt))
    precision = (hits + smoothing / c) / (total + smoothing)
    rel = np.take_along_axis(precision, pred, axis=1)  # [K, N]
    ww = w * rel
    q = np.einsum("kn,knc->nc", ww, probs) + 1e-12
    return q / q.sum(1, keepdims=True)


def score(q, kept, depicted):
    if not kept.any():
        return float("nan"), 0.0, float("nan")
    acc = float((q[kept].argmax(1) == depicted[kept]).mean())
    mass = float(q[kept, depicted[kept]].mean())
    return acc, float(kept.mean()), mass


def main(folder: str) -> None:
    for path in sorted(Path(folder).glob("round_*.npz")):
        d = np.load(path)
        probs, entropy, prompt, depicted = d["probs"], d["entropy"], d["prompt"], d["depicted"]
        mods = d["modality"]
        print(f"\n{path.name}: K={probs.shape[0]} N={probs.shape[1]} prompt acc {np.mean(prompt == depicted):.3f}")
        for m in ("image", "text"):
            sel = mods == m
            acc = (probs[sel].argmax(2) == depicted).mean(1)
            print(f"  {m} clients' argmax acc vs depicted: {np.round(acc, 3).tolist()}")
        rows = {}
        all_kept = np.ones(probs.shape[1], bool)
        for beta in (0.2, 0.35, 0.5, 0.7, 1.0):
            v = labvote(probs, entropy, beta)
            rows[f"labvote b={beta}"] = score(v.soft_labels, v.kept, depicted)
        v = plain_average(probs)
        rows["plain average"] = score(v.soft_labels, v.kept, depicted)
        rows["prompt one-hot"] = score(np.eye(probs.shape[2])[prompt], all_kept, depicted)
        for wgt in (0.25, 0.5, 1.0, 2.0):
            rows[f"prompt prior {wgt}"] = score(prompt_prior(probs, entropy, prompt, wgt), all_kept, depicted)
        rows["precision-weighted"] = score(precision_weighted(probs, entropy, prompt), all_kept, depicted)
        for name, (acc, keep, mass) in rows.items():
            print(f"  {name:22s} acc {acc:.3f}  kept {keep:.2f}  mass-on-depicted {mass:.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
