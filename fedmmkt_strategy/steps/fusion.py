"""MultiRepFusion (step 4): contrastive aggregation within a modality, then inter-modal
cross-attention across modalities.

a. Contrastive aggregation (CreamFL-style). A client's representation of sample i scores how
   well it picks out i's anchor among the anchors of the kept batch:
   ``s_{k,i} = log softmax_j(r_{k,i} . g_j / tau)[i]``; the client weights of sample i are
   ``alpha_{k,i} = softmax_k(s_{k,i})`` and ``R_{m,i} = sum_k alpha_{k,i} r_{k,i}``.
   The negatives j are the kept samples of i's block (`contrastive-batch` rows, CreamFL scores
   within a batch), and rows are processed in chunks: the N x N matrix that made CreamFL's
   reference code run out of memory at 50 k samples is never materialised.
b. Cross-attention. Each modality's aggregate attends, as query, over the tokens of all other
   modalities (a set, not an average, when there are more than two; ``others="mean"`` averages
   them into one token instead, the paper's reading, for comparison), with residual and
   LayerNorm. The module is trained on the server with confidence-weighted cross-entropy on the
   voted labels plus InfoNCE between modalities.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedmmkt_strategy.config import FUSION_HEADS


@torch.no_grad()
def contrastive_scores(
    reps: torch.Tensor, anchors: torch.Tensor, tau: float, batch_size: int | None = None, chunk: int = 256
) -> torch.Tensor:
    """s[k, i] = log softmax over j of (reps[k, i] . anchors[j] / tau), evaluated at j = i.

    reps: [K, N, d]; anchors: [N, d]. Returns [K, N]. The negatives j are the rows of i's block of
    `batch_size` consecutive rows (all N rows when None), as CreamFL scores within a batch; rows
    are processed `chunk` at a time, so memory is O(K * chunk * batch_size), never N x N.
    """
    k, n, _ = reps.shape
    block = n if batch_size is None else batch_size
    scores = torch.empty(k, n, dtype=torch.float32)
    for block_start in range(0, n, block):
        block_end = min(n, block_start + block)
        negatives = anchors[block_start:block_end]
        for start in range(block_start, block_end, chunk):
            end = min(block_end, start + chunk)
            rows = reps[:, start:end]  # [K, b, d]
            logits = rows @ negatives.T / tau  # [K, b, block]
            own = (rows * anchors[start:end]).sum(-1) / tau  # [K, b]
            scores[:, start:end] = own - torch.logsumexp(logits, dim=-1)
    return scores


def contrastive_weights(
    reps: torch.Tensor,
    anchors: torch.Tensor,
    tau: float = 0.1,
    batch_size: int | None = None,
    client_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """alpha [K, N]: per sample, a softmax over clients of their contrastive scores.

    `client_weights` [K] in [0, 1] (the Byzantine defence's reliabilities) multiply each client's
    ``exp(s_{k,i})`` before normalising: weight 0 removes a client, all-equal weights change nothing."""
    scores = contrastive_scores(reps, anchors, tau, batch_size)
    if client_weights is not None:
        scores = scores + torch.log(client_weights.to(scores.dtype).clamp_min(1e-12))[:, None]
    return torch.softmax(scores, dim=0)


def aggregate(reps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """R [N, d] = sum_k weights[k, i] * reps[k, i]."""
    return torch.einsum("kn,knd->nd", weights, reps)


def weight_diagnostics(alpha: torch.Tensor) -> dict[str, float | list[float]]:
    """Collapse watch: mean normalised entropy of the client weights (1 = uniform, 0 = one
    client takes everything), mean and max of the largest weight, mean weight per client."""
    k = alpha.shape[0]
    entropy = -(alpha * alpha.clamp_min(1e-12).log()).sum(0)
    norm = entropy / math.log(k) if k > 1 else torch.zeros_like(entropy)
    top = alpha.max(0).values
    return {
        "alpha_entropy": float(norm.mean()),
        "alpha_max_mean": float(top.mean()),
        "alpha_max": float(top.max()),
        "alpha_client_mean": alpha.mean(1).tolist(),
    }


class CrossModalFusion(nn.Module):
    """Inter-modal cross-attention: modality m's token attends over the other modalities' tokens.

    Parameters
    ----------
    modalities : list of str
        The modalities, in a fixed order (keys of the token dicts).
    dim : int
        Width d of the fusion space.
    num_classes : int
        Size of the label space of the training head.
    heads : int
        Attention heads (d must be divisible by it).
    others : {"attention", "mean"}
        How a modality sees the other modalities: "attention" (default) attends over their tokens
        as a set; "mean" averages them into one token first (identical with two modalities).
    """

    def __init__(
        self, modalities: list[str], dim: int, num_classes: int, heads: int = FUSION_HEADS, others: str = "attention"
    ):
        super().__init__()
        if others not in ("attention", "mean"):
            raise ValueError(f"others must be 'attention' or 'mean', got {others!r}")
        self.others = others
        self.modalities = list(modalities)
        self.modality_embedding = nn.ParameterDict({m: nn.Parameter(torch.zeros(dim)) for m in self.modalities})
        self.attention = nn.ModuleDict(
            {m: nn.MultiheadAttention(dim, heads, batch_first=True) for m in self.modalities}
        )
        self.norm = nn.ModuleDict({m: nn.LayerNorm(dim) for m in self.modalities})
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """tokens: modality -> [B, d], for the modalities that answered this round (any of the
        module's may be missing: a node fails, a modality is left unsampled). Returns modality ->
        fused [B, d] (not normalised) for those; alone, a modality has nothing to attend to and
        keeps its token."""
        present = [m for m in self.modalities if m in tokens]
        fused = {}
        for m in present:
            others = [tokens[o] + self.modality_embedding[o] for o in present if o != m]
            if not others:
                fused[m] = tokens[m]
                continue
            query = tokens[m].unsqueeze(1)  # [B, 1, d]
            keys = torch.stack(others, dim=1)  # [B, M-1, d]: a set of tokens
            if self.others == "mean":
                keys = keys.mean(dim=1, keepdim=True)  # [B, 1, d]: one averaged token
            attended, _ = self.attention[m](query, keys, keys, need_weights=False)
            fused[m] = self.norm[m](tokens[m] + attended.squeeze(1))
        return fused


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE: row i of `a` should match row i of `b` among all rows."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(len(a))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def train_fusion(
    module: CrossModalFusion,
    tokens: dict[str, torch.Tensor],
    labels: torch.Tensor,
    confidence: torch.Tensor,
    *,
    steps: int = 50,
    lr: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """A few optimiser steps of ``CE(head(F_m), y) * confidence + InfoNCE(F_m, F_m')``."""
    n = len(labels)
    if n < 2 or steps == 0:
        return {"fusion_ce": float("nan"), "fusion_nce": float("nan")}
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    module.train()
    ce_total = nce_total = 0.0
    for _ in range(steps):
        idx = torch.randperm(n, generator=generator)[:batch_size]
        fused = module({m: t[idx] for m, t in tokens.items()})
        ce = sum(
            (F.cross_entropy(module.head(f), labels[idx], reduction="none") * confidence[idx]).mean()
            for f in fused.values()
        ) / len(fused)
        names = list(fused)
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        nce = sum(info_nce(fused[a], fused[b]) for a, b in pairs) / max(len(pairs), 1)
        loss = ce + nce
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        ce_total += ce.item()
        nce_total += nce.item()
    return {"fusion_ce": ce_total / steps, "fusion_nce": nce_total / steps}


@torch.no_grad()
def fuse(module: CrossModalFusion, tokens: dict[str, torch.Tensor], batch_size: int = 4096) -> dict[str, np.ndarray]:
    """Fused, L2-normalised vectors per modality, in batches."""
    module.eval()
    n = len(next(iter(tokens.values())))
    out: dict[str, list[torch.Tensor]] = {m: [] for m in module.modalities if m in tokens}
    for start in range(0, n, batch_size):
        fused = module({m: t[start : start + batch_size] for m, t in tokens.items()})
        for m, f in fused.items():
            out[m].append(F.normalize(f, dim=-1))
    return {m: torch.cat(parts).numpy().astype(np.float32) for m, parts in out.items()}


# ---------------------------------------------------------------- aggregation as a sum (secure aggregation)
def contrastive_terms(
    reps: torch.Tensor, anchors: torch.Tensor, tau: float, batch_size: int | None = None, rule: str = "contrastive"
) -> np.ndarray:
    """One client's share of its modality's aggregate, flattened [M x d]: ``e_i * r_i`` with
    ``e_i = B_i * exp(s_i)`` (B_i: the size of row i's block, a factor every client shares).

    The aggregate ``R_i = sum_k alpha_{k,i} r_{k,i}`` with ``alpha = softmax_k(s)`` is only used
    normalised, and ``normalize(sum_k alpha_k r_k) = normalize(sum_k exp(s_k) r_k)``: the
    softmax's denominator, like B_i, cancels. So the server needs one sum over clients, which
    a client can mask (``secure-aggregation``); B_i keeps typical entries near 1, far above the
    sum's 2^-32 resolution. ``rule = "mean"`` is the plain mean (contrastive aggregation off).
    """
    reps = torch.as_tensor(reps, dtype=torch.float32)
    m = reps.shape[0]
    if rule == "mean":
        scale = torch.ones(m)
    elif rule == "contrastive":
        block = m if batch_size is None else batch_size
        sizes = torch.tensor([min(block, m - (i // block) * block) for i in range(m)], dtype=torch.float32)
        scale = torch.exp(contrastive_scores(reps[None], torch.as_tensor(anchors), tau, batch_size)[0]) * sizes
    else:
        raise ValueError(f"rule must be 'contrastive' or 'mean', got {rule!r}")
    return (scale[:, None] * reps).double().numpy().ravel()
