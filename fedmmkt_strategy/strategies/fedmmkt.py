"""`fedmmkt`: the round of ALGORITHM.md as a Flower Strategy.

1. synthesis       the T2I model renders class prompts, the captioner captions them
2. query           ``query.infer`` to every sampled client: probabilities, entropies, embeddings
3. LabVote         entropy-weighted vote, label correction, discard of samples without a vote
4. MultiRepFusion  contrastive aggregation per modality, then inter-modal cross-attention
5. T2I update      the denoiser is fine-tuned on the kept pairs, weighted by vote confidence,
                   with the server's public pairs replayed (one optimiser and EMA for the run)
6. distill         ``train.distill`` with the voted soft labels and the modality's fused targets
7. evaluate        client accuracies; server GenAcc, domain FID and a sample grid

Steps 1-5 run in `prepare_round` (before Flower sends the train messages), step 6 is the
train phase of the base strategy and step 7 its evaluate phase. Each step is a call into its
own module; the baselines `fedmd`, `creamfl` and `self-ft` are siblings that switch steps off.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import contextmanager
from functools import partial
from logging import INFO

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.federation.replies import PhaseOutcome
from fedmmkt_strategy.federation.secure_round import secure_fuse, secure_vote
from fedmmkt_strategy.federation.validation import check_inference_reply, sendable
from fedmmkt_strategy.generative.finetune import DenoiserFineTuner, FineTuneSettings, PairSet
from fedmmkt_strategy.generative.judge import judge_predict
from fedmmkt_strategy.generative.quality import class_prompt_set, resize_images, score_t2i
from fedmmkt_strategy.generative.reuse import PretrainedGenerations
from fedmmkt_strategy.generative.server_models import (
    ServerModels,
    caption_anchors,
    load_server_models,
    misdrawn_prompt_classes,
    public_replay,
)
from fedmmkt_strategy.generative.standard_metrics import clip_score, standard_fid
from fedmmkt_strategy.generative.synthesis import SyntheticPool, finetune_prompts, fresh_pool, refresh, world_prompts
from fedmmkt_strategy.generative.t2i import denoiser_state, load_denoiser_state
from fedmmkt_strategy.pool_sync import encode_pool_update, parts_for, rows_to_send
from fedmmkt_strategy.reporting.results import Diagnostics, RunRecorder
from fedmmkt_strategy.steps.fusion import (
    CrossModalFusion,
    aggregate,
    contrastive_weights,
    fuse,
    train_fusion,
    weight_diagnostics,
)
from fedmmkt_strategy.steps.labvote import (
    VoteResult,
    confirmed,
    hardened,
    labvote,
    mix_prompt,
    most_confident,
    plain_average,
    prompt_class_weights,
    vote_diagnostics,
)
from fedmmkt_strategy.steps.privacy import PrivacyLedger
from fedmmkt_strategy.steps.robust import ReliabilityTracker
from fedmmkt_strategy.strategies.base import FederatedStrategy
from worlds import splits
from worlds.modality import MODALITIES
from worlds.sensor import from_captions as sensor_from_captions


class FedMMKT(FederatedStrategy):
    """FedMMKT: server T2I model and heterogeneous client task models improve each other.

    Parameters
    ----------
    config : RunConfig
        Run configuration; the keys of steps 1-7 are documented in pyproject.toml
        (``synthetic-size``, ``refresh-fraction``, ``labvote-beta``, ``contrastive-tau``,
        ``fusion-steps``, ``t2i-steps-per-round``, ...), and the ablation switches
        ``use-labvote``, ``use-contrastive-aggregation``, ``use-cross-attention``,
        ``use-t2i-update``.
    recorder : RunRecorder
        Receives per-round diagnostics and writes the results folder.
    models : ServerModels, optional
        The server's T2I model, captioner and judge; loaded from the config when omitted.
    """

    #: Which targets clients distil towards; siblings turn one off.
    send_soft_labels = True
    send_fused = True
    #: Labels the T2I model is fine-tuned with: the vote ("voted") or the prompt ("prompt").
    t2i_labels = "voted"

    def __init__(self, config: RunConfig, recorder: RunRecorder, models: ServerModels | None = None):
        super().__init__(config, recorder)
        self.models = models or load_server_models(config)
        m = self.models
        self.generations = PretrainedGenerations(
            m.pipe, m.captioner, m.processor, config.cache_dir if config.reuse_cache else None
        )
        self.world = config.world()
        self.prompt_fn = world_prompts(self.world)
        self.use_vote = config.use_labvote
        self.use_contrastive = config.use_contrastive_aggregation
        self.use_cross_attention = config.use_cross_attention
        self.use_t2i_update = config.use_t2i_update
        self.prompt_mix = config.labvote_prompt_mix
        self.pool: SyntheticPool | None = None
        self.fusion: CrossModalFusion | None = None
        self.prev_fused: dict[str, np.ndarray] = {}  # modality -> [N, d], NaN rows unknown
        self.targets: dict[int, ArrayRecord] = {}
        self.tuner: DenoiserFineTuner | None = None
        self.label_counts: dict[int, np.ndarray] = {}  # node -> private examples per class (class-aware vote)
        # under secure aggregation the counts arrive only as sums per modality (secure_round.py)
        self.class_totals: dict[str, np.ndarray] = {}  # modality -> its examples per class
        self.modality_sizes: dict[str, int] = {}  # modality -> nodes inside that sum's session
        self.secure_counted: set[int] = set()  # the nodes whose counts the totals hold
        self.misdrawn = misdrawn_prompt_classes(config)
        self.node_pool_round: dict[int, int] = {}  # node -> round whose pool it holds
        self._timings: dict[str, float] = {}
        robust = config.labvote_robust == "reliability"
        self.reliability = ReliabilityTracker(config.labvote_reliability_decay) if robust else None
        self.vote_reliability: dict[int, float] = {}  # node -> this round's vote reliability (the defence)
        self.privacy = (
            PrivacyLedger(config.dp_noise_multiplier, config.dp_delta) if config.dp_noise_multiplier else None
        )

    @contextmanager
    def _timed(self, step: str):
        start = time.perf_counter()
        yield
        self._timings[f"time_{step}_s"] = time.perf_counter() - start

    # ------------------------------------------------------------------ the round
    def prepare_round(self, server_round: int, grid: Grid) -> None:
        """Steps 1-5 and the step-6 payloads; every step returns its `Diagnostics`, recorded here once."""
        self._timings = {}
        with self._timed("synthesis"):
            self.pool = self.synthesize(server_round)
        if self.config.secure_aggregation:  # the same steps 2-4 on masked sums (secure_round.py)
            with self._timed("labvote"):
                summed, members = secure_vote(self, grid, server_round)
                privacy = self.account_privacy(members)
                vote, vote_diag = self.settle_vote(server_round, summed, members)
            with self._timed("fusion"):
                tokens = secure_fuse(self, grid, server_round, vote, members)
                fused, fusion_diag = self.cross_modal(server_round, tokens, vote) if tokens else ({}, Diagnostics())
        else:
            with self._timed("query"):
                outcome = self.query(server_round, grid)
                members = sorted(outcome.ok)
                privacy = self.account_privacy(members)
            with self._timed("labvote"):
                vote, vote_diag = self.vote(server_round, outcome)
            with self._timed("fusion"):
                fused, fusion_diag = self.fuse(server_round, outcome, vote)
        with self._timed("t2i_update"):
            t2i_diag = self.update_t2i(server_round, vote)
        self.targets = self.distill_targets(members, vote, fused)
        self.recorder.record(server_round, privacy, vote_diag, fusion_diag, t2i_diag, Diagnostics(self._timings))

    def synthesize(self, server_round: int) -> SyntheticPool:
        """Step 1: a fresh class-balanced pool in round 1, then a refreshed fraction each round.
        What the untouched pre-trained model renders is reused from earlier runs (`reuse.py`)."""
        cfg = self.config
        generator = partial(
            self.generations.captioned,
            steps=cfg.sampling_steps,
            guidance=cfg.guidance_scale,
            batch_size=cfg.generation_batch_size,
            progress=True,
        )
        if self.pool is None:
            log(INFO, "round %d: synthesising %d samples", server_round, cfg.synthetic_size)
            seed, classes = cfg.seed * 100003, self.world.num_classes
            return fresh_pool(cfg.synthetic_size, seed, generator, server_round, classes, self.prompt_fn)
        log(INFO, "round %d: regenerating %.0f %% of the synthetic pool", server_round, 100 * cfg.refresh_fraction)
        return refresh(
            self.pool,
            cfg.refresh_fraction,
            generator,
            server_round,
            seed=cfg.seed * 100003 + server_round,
            prompt_fn=self.prompt_fn,
        )

    def _pool_update(self, server_round: int, node: int) -> ArrayRecord:
        """The pool rows this node lacks, of its modality (every modality if still unknown)."""
        assert self.pool is not None
        rows = rows_to_send(self.pool.generation_round, self.node_pool_round.get(node))
        parts = parts_for(self.clients.get(node, {}).get(P.MODALITY), self._has_sensor_clients())
        return encode_pool_update(
            rows,
            len(self.pool),
            # the T2I model may render larger than the clients' inputs (SD: 512 px)
            images=resize_images(self.pool.images[rows], self.config.image_size) if "image" in parts else None,
            captions=[self.pool.captions[i] for i in rows] if "text" in parts else None,
            sensors=self._pool_sensors(rows) if "sensor" in parts else None,
        )

    def _has_sensor_clients(self) -> bool:
        """Whether the layout has sensor clients: only then do unknown nodes get readings too."""
        return any(entry.modality == "sensor" for entry in self.config.layout)

    def _pool_sensors(self, rows: np.ndarray) -> np.ndarray:
        """Synthetic sensor readings of pool rows, measured from their captions (worlds/sensor.py).
        Seeded per row and generation round, so a row re-sent to another node is the same reading."""
        seeds = [self.config.seed * 100003 + int(r) * 1009 + int(self.pool.generation_round[r]) for r in rows]
        captions = [self.pool.captions[i] for i in rows]
        return np.ascontiguousarray(sensor_from_captions(captions, seeds, self.config.domain.sensor_missing_rate))

    def query(self, server_round: int, grid: Grid) -> PhaseOutcome:
        """Step 2: every sampled client's outputs on the synthetic inputs, validated on arrival."""
        ask_counts = self.use_vote and self.config.labvote_class_weights == "label-counts"
        contents = {
            node: RecordDict(
                {
                    P.SYNTHETIC: self._pool_update(server_round, node),
                    P.CONFIG: ConfigRecord(
                        {
                            P.SERVER_ROUND: server_round,
                            P.SEND_LABEL_COUNTS: ask_counts and node not in self.label_counts,
                        }
                    ),
                }
            )
            for node in self.nodes
        }
        messages = self.send(P.QUERY_INFER, P.QUERY_INFER, server_round, contents)
        replies = grid.send_and_receive(messages, timeout=self.config.round_timeout)
        n, d, c, dtype = len(self.pool), self.config.fusion_dim, self.world.num_classes, self.config.uplink_dtype
        outcome = self.receive(P.QUERY_INFER, server_round, replies, lambda r: check_inference_reply(r, n, c, d, dtype))
        for node, reply in outcome.ok.items():
            counts = reply.content[P.CLIENT].get(P.LABEL_COUNTS)
            if counts is not None:
                self.label_counts[node] = np.asarray(counts, np.int64)
        for node in self.nodes:
            if node in outcome.ok:
                self.node_pool_round[node] = server_round
            else:  # it may have lost or never applied the update: send everything next time
                self.node_pool_round.pop(node, None)
        return outcome

    def account_privacy(self, nodes: list[int]) -> Diagnostics:
        """With differentially private uploads: each accepted upload's epsilon so far (privacy.py)."""
        diag = Diagnostics()
        if self.privacy is None:
            return diag
        spent = [self.privacy.record(node, len(self.pool)) for node in nodes]
        for node, eps in zip(nodes, spent):
            diag.client(node, dp_epsilon=eps)
        diag.server.update(dp_epsilon_max=max(spent, default=0.0), dp_delta=self.config.dp_delta)
        return diag

    def _stack(self, outcome: PhaseOutcome, key: str, nodes: Iterable[int]) -> np.ndarray:
        """One inference array of every node, stacked [K, ...] as float32.

        Replies may travel as float16 (`uplink-dtype`); LabVote, the fusion and its optimiser
        work in float32, so the cast happens here, once. float16 probabilities are re-normalised
        per row: rounding leaves their sums off by up to ~5e-4, and the voted soft labels sent
        back must sum to one (docs/protocol.md).
        """
        stacked = np.stack([outcome.ok[n].content[P.INFERENCE][key].numpy() for n in nodes])
        if stacked.dtype == np.float32:
            return stacked
        stacked = stacked.astype(np.float32)
        if key == P.PROBS:
            stacked /= np.maximum(stacked.sum(-1, keepdims=True), np.finfo(np.float32).tiny)
        return stacked

    def vote(self, server_round: int, outcome: PhaseOutcome) -> tuple[VoteResult, Diagnostics]:
        """Step 3: LabVote over all clients of all modalities (or FedMD's plain average)."""
        nodes = sorted(outcome.ok)
        probs = self._stack(outcome, P.PROBS, nodes)
        defence = Diagnostics()
        if self.use_vote:
            weights, defence = self.client_reliability(nodes, probs)
            result = labvote(
                probs,
                self._stack(outcome, P.ENTROPY, nodes),
                self.config.labvote_beta,
                weights,
                self.class_aware_weights(nodes),
            )
        else:
            result = plain_average(probs)
        result, diag = self.settle_vote(server_round, result, nodes)
        return result, defence.merge(diag)

    def settle_vote(self, server_round: int, result: VoteResult, nodes: list[int]) -> tuple[VoteResult, Diagnostics]:
        """The server's own part of the vote (the prompt mix) and its diagnostics; per-client
        shares of counted votes where the vote knows them (not under secure aggregation)."""
        result = mix_prompt(result, self.pool.classes, self.prompt_mix)
        depicted = None if self.models.judge is None else judge_predict(self.models.judge, self.pool.images)
        diag = vote_diagnostics(result, self.pool.classes, depicted, self.class_groups(self.pool.classes))
        shares = diag.pop("counted_vote_share")
        recorded = Diagnostics(diag)
        if len(shares) == len(nodes):
            for node, share in zip(nodes, shares):
                recorded.client(node, counted_vote_share=share)
        log(
            INFO,
            "round %d: LabVote kept %d of %d samples (discard rate %.2f), agreement with prompts %.2f",
            server_round,
            diag["kept"],
            len(self.pool),
            diag["discard_rate"],
            diag["vote_prompt_agreement"],
        )
        return result, recorded

    def class_aware_weights(self, nodes: list[int]) -> np.ndarray | None:
        """With ``labvote-class-weights = "label-counts"``: each client's say on each sample, its share
        of its modality's examples of the prompted class (`labvote.prompt_class_weights`), so image
        and text clients weigh the same in all. A node whose counts never arrived does not vote."""
        if self.config.labvote_class_weights == "none":
            return None
        weights = np.zeros((len(nodes), len(self.pool)))
        for modality in {self.clients[n][P.MODALITY] for n in nodes}:
            members = [
                j for j, n in enumerate(nodes) if self.clients[n][P.MODALITY] == modality and n in self.label_counts
            ]
            if members:
                counts = np.stack([self.label_counts[nodes[j]] for j in members])
                weights[members] = prompt_class_weights(counts, self.pool.classes)
        return weights

    def class_groups(self, classes: np.ndarray) -> dict[str, np.ndarray]:
        """Samples split by prompt class: "confused" (classes the pre-trained T2I model draws wrongly,
        toy world only: `splits.misdrawn_classes`) and "clean"; empty when the world has no such set."""
        if len(self.misdrawn) == 0:
            return {}
        confused = np.isin(classes, self.misdrawn)
        return {"confused": confused, "clean": ~confused}

    def client_reliability(self, nodes: list[int], probs: np.ndarray) -> tuple[np.ndarray | None, Diagnostics]:
        """The Byzantine defence's per-client vote weights (robust.py), None when it is off."""
        diag = Diagnostics()
        if self.reliability is None:
            return None, diag
        weights = self.reliability.weights(nodes, probs)
        self.vote_reliability = dict(zip(nodes, weights.tolist()))
        for node, weight in zip(nodes, weights):
            agreement = self.reliability.history.get(node, float("nan"))
            diag.client(node, reliability=float(weight), vote_agreement=agreement)
        return weights, diag

    def fusion_reliability(self, nodes: list[int], reps: torch.Tensor) -> tuple[torch.Tensor | None, Diagnostics]:
        """The defence's weight [K] of each client of one modality in the fusion: its vote
        reliability times its embedding reliability (robust.py); None when the defence is off."""
        diag = Diagnostics()
        if self.reliability is None:
            return None, diag
        embedding = self.reliability.embedding_weights(nodes, reps.numpy())
        vote = np.array([self.vote_reliability.get(node, 1.0) for node in nodes])
        for node, weight in zip(nodes, embedding):
            agreement = self.reliability.embedding_history.get(node, float("nan"))
            diag.client(node, embedding_reliability=float(weight), embedding_agreement=agreement)
        return torch.as_tensor(vote * embedding, dtype=torch.float32), diag

    def _anchors(self, modality: str, kept: np.ndarray, text_anchor: torch.Tensor) -> torch.Tensor:
        """The other modalities' previous fused vectors of the kept rows, where known; else the
        caption's text-encoder anchor (round 1, and rows regenerated since)."""
        others = [self.prev_fused[o][kept] for o in self.prev_fused if o != modality]
        if not others:
            return text_anchor
        mean = torch.as_tensor(np.nanmean(np.stack(others), axis=0) if len(others) > 1 else others[0])
        known = ~torch.isnan(mean).any(-1)
        return torch.where(known[:, None], F.normalize(torch.nan_to_num(mean), dim=-1), text_anchor)

    def fuse(
        self, server_round: int, outcome: PhaseOutcome, vote: VoteResult
    ) -> tuple[dict[str, np.ndarray], Diagnostics]:
        """Step 4: contrastive aggregation within each modality, then cross-attention."""
        kept = vote.kept_indices
        by_modality = {m: sorted(n for n in outcome.ok if self.clients[n][P.MODALITY] == m) for m in MODALITIES}
        by_modality = {m: nodes for m, nodes in by_modality.items() if nodes}
        recorded = Diagnostics()
        if len(kept) == 0:
            return {}, recorded
        text_anchor = caption_anchors(self.models, [self.pool.captions[i] for i in kept])
        self.forget_regenerated(server_round)
        tokens: dict[str, torch.Tensor] = {}
        for m, nodes in by_modality.items():
            reps = torch.as_tensor(self._stack(outcome, P.EMBEDDING, nodes)[:, kept])
            defence, defence_diag = self.fusion_reliability(nodes, reps)
            recorded.merge(defence_diag)
            if self.use_contrastive:
                anchors = self._anchors(m, kept, text_anchor)
                alpha = contrastive_weights(
                    reps, anchors, self.config.contrastive_tau, self.config.contrastive_batch, defence
                )
            elif defence is not None and float(defence.sum()) > 0:
                alpha = (defence / defence.sum())[:, None].expand(reps.shape[:2]).clone()
            else:
                alpha = torch.full(reps.shape[:2], 1.0 / len(nodes))
            diag = weight_diagnostics(alpha)
            for node, w in zip(nodes, diag.pop("alpha_client_mean")):
                recorded.client(node, alpha_mean=w)
            recorded.merge(Diagnostics({f"{m}_{k}": v for k, v in diag.items()}))
            tokens[m] = F.normalize(aggregate(reps, alpha), dim=-1)
        fused, cross_diag = self.cross_modal(server_round, tokens, vote)
        return fused, recorded.merge(cross_diag)

    def forget_regenerated(self, server_round: int) -> None:
        """Previous fused vectors of rows regenerated this round describe images that are gone."""
        regenerated = self.pool.generation_round == server_round
        for m in list(self.prev_fused):
            self.prev_fused[m][regenerated] = np.nan

    def cross_modal(
        self, server_round: int, tokens: dict[str, torch.Tensor], vote: VoteResult
    ) -> tuple[dict[str, np.ndarray], Diagnostics]:
        """Step 4b on each modality's aggregate [M, d] of the kept rows: cross-attention (trained
        here on the voted labels), and the fused vectors remembered as next round's anchors."""
        kept = vote.kept_indices
        fused = {m: t.numpy() for m, t in tokens.items()}
        diag = Diagnostics()
        if self.use_cross_attention and len(tokens) > 1:
            if self.fusion is None:
                torch.manual_seed(self.config.seed)
                # every modality of the layout, not only this round's: any may be missing in a round
                layout = {entry.modality for entry in self.config.layout}
                self.fusion = CrossModalFusion(
                    [m for m in MODALITIES if m in layout or m in tokens],
                    self.config.fusion_dim,
                    self.world.num_classes,
                    others=self.config.fusion_other_modalities,
                )
            losses = train_fusion(
                self.fusion,
                tokens,
                torch.as_tensor(vote.labels[kept]),
                torch.as_tensor(vote.confidence[kept]),
                steps=self.config.fusion_steps,
                lr=self.config.fusion_lr,
                seed=self.config.seed + server_round,
            )
            diag.server.update(losses)
            fused = fuse(self.fusion, tokens)
        for m, f in fused.items():
            full = self.prev_fused.setdefault(m, np.full((len(self.pool), f.shape[1]), np.nan, np.float32))
            full[kept] = f
        return fused, diag

    def update_t2i(self, server_round: int, vote: VoteResult | None) -> Diagnostics:
        """Step 5: fine-tune the denoiser on the kept pairs (x_i, prompt of y_i), each weighted by its
        vote confidence, with the public pairs replayed in every batch (`finetune.py`)."""
        if not self.use_t2i_update or self.config.t2i_steps_per_round == 0:
            return Diagnostics()
        if self.t2i_labels == "voted":
            rows = most_confident(vote, self.config.t2i_update_fraction) if vote.kept.any() else vote.kept_indices
            if self.config.t2i_pairs == "confirmed":
                rows = np.intersect1d(rows, confirmed(vote, self.pool.classes))
            labels, weights = vote.labels[rows], vote.confidence[rows]
        else:  # self-ft: the server's own prompt labels, every sample, no client knowledge
            rows = np.arange(len(self.pool))
            labels, weights = self.pool.classes, np.ones(len(rows), np.float32)
        if len(rows) == 0:
            return Diagnostics()
        prompts = finetune_prompts(self.pool, rows, labels, self.config.seed * 7 + server_round, self.prompt_fn)
        pairs = PairSet.encode(self.models.pipe, self.pool.images[rows], prompts, weights=weights)
        loss = self.t2i_tuner().run(pairs, self.config.t2i_steps_per_round, seed=self.config.seed + server_round)
        relabelled = int(np.sum(labels != self.pool.classes[rows]))
        return Diagnostics(
            {"t2i_finetune_loss": loss, "t2i_finetune_samples": int(len(rows)), "t2i_relabelled": relabelled}
        )

    def t2i_tuner(self) -> DenoiserFineTuner:
        """Step 5's fine-tuner, built on first use: one optimiser, weight average and replay set for
        the whole run."""
        if self.tuner is None:
            cfg = self.config
            settings = FineTuneSettings(
                lr=cfg.t2i_lr,
                batch_size=cfg.t2i_batch_size,
                warmup_steps=cfg.t2i_warmup_steps,
                ema_decay=cfg.t2i_ema_decay,
                replay_fraction=cfg.t2i_replay_fraction,
                use_lora={"auto": None, "on": True, "off": False}[cfg.t2i_lora],
            )
            replay = public_replay(self.models.pipe, cfg) if cfg.t2i_replay_fraction > 0 else None
            self.tuner = DenoiserFineTuner(self.models.pipe, settings, replay)
        return self.tuner

    def distill_targets(
        self, nodes: list[int], vote: VoteResult, fused: dict[str, np.ndarray]
    ) -> dict[int, ArrayRecord]:
        """Step 6 payloads: per node, the kept rows' soft labels (or with ``labvote-targets = "hard"``
        the vote's one-hot decisions, `hardened`) and its modality's fused vectors."""
        if self.config.labvote_targets == "hard":
            vote = hardened(vote)
        kept = vote.kept_indices
        if len(kept) == 0:
            return {}
        send_labels = (
            self.send_soft_labels
            and sendable("voted soft labels", vote.soft_labels[kept], non_negative=True)
            and sendable("vote confidences", vote.confidence[kept], non_negative=True)
        )
        fused = {m: f for m, f in fused.items() if sendable(f"{m} fused targets", f)}
        targets = {}
        for node in nodes:
            record = ArrayRecord({P.INDICES: Array(kept.astype(np.int64))})
            if send_labels:
                record[P.SOFT_LABELS] = Array(vote.soft_labels[kept])
                record[P.WEIGHTS] = Array(np.ascontiguousarray(vote.confidence[kept], np.float32))
            modality = self.clients[node][P.MODALITY]
            if self.send_fused and modality in fused:
                record[P.FUSED] = Array(fused[modality])
            if len(record) > 1:
                targets[node] = record
        return targets

    def train_content(self, server_round: int, node_id: int) -> RecordDict:
        content = super().train_content(server_round, node_id)
        if node_id in self.targets:
            content[P.TARGETS] = self.targets[node_id]
        return content

    # ------------------------------------------------------------------ checkpoint (checkpoint.py)
    def state_dict(self) -> dict:
        """T2I denoiser (or LoRA), fusion module, synthetic pool, previous fused vectors,
        reliability history and privacy ledger. Which rows each node holds is not kept: after a
        resume every node gets the whole pool once, as its SuperNode may have restarted."""
        pool = None
        if self.pool is not None:
            p = self.pool
            pool = {"images": p.images, "captions": list(p.captions), "prompts": list(p.prompts)}
            pool |= {"classes": p.classes, "generation_round": p.generation_round}
        fusion = None
        if self.fusion is not None:
            fusion = {"modalities": list(self.fusion.modalities), "weights": self.fusion.state_dict()}
        return {
            **super().state_dict(),
            "denoiser": denoiser_state(self.models.pipe),
            "t2i_tuner": self.tuner.state_dict() if self.tuner is not None else None,
            "fusion": fusion,
            "pool": pool,
            "prev_fused": dict(self.prev_fused),
            "label_counts": dict(self.label_counts),
            "class_totals": dict(self.class_totals),
            "modality_sizes": dict(self.modality_sizes),
            "secure_counted": sorted(self.secure_counted),
            "reliability": self.reliability.state_dict() if self.reliability else None,
            "privacy": self.privacy.state_dict() if self.privacy else None,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        load_denoiser_state(self.models.pipe, state["denoiser"])
        if state.get("t2i_tuner") is not None:
            self.t2i_tuner().load_state_dict(state["t2i_tuner"])
        if state["fusion"] is not None:
            self.fusion = CrossModalFusion(
                state["fusion"]["modalities"],
                self.config.fusion_dim,
                self.world.num_classes,
                others=self.config.fusion_other_modalities,
            )
            self.fusion.load_state_dict(state["fusion"]["weights"])
        if state["pool"] is not None:
            p = state["pool"]
            arrays = {k: p[k].numpy() for k in ("images", "classes", "generation_round")}
            self.pool = SyntheticPool(captions=list(p["captions"]), prompts=list(p["prompts"]), **arrays)
        self.prev_fused = {m: v.numpy() for m, v in state["prev_fused"].items()}
        self.label_counts = {int(n): np.asarray(v) for n, v in state.get("label_counts", {}).items()}
        self.class_totals = {str(m): np.asarray(v, np.float64) for m, v in state.get("class_totals", {}).items()}
        self.modality_sizes = {str(m): int(v) for m, v in state.get("modality_sizes", {}).items()}
        self.secure_counted = {int(n) for n in state.get("secure_counted", [])}
        if self.reliability is not None and state["reliability"] is not None:
            self.reliability.load_state_dict(state["reliability"])
        if self.privacy is not None and state["privacy"] is not None:
            self.privacy.load_state_dict(state["privacy"])

    # ------------------------------------------------------------------ step 7 (server side)
    def evaluate_t2i(self, server_round: int, per_class: int) -> Diagnostics:
        """GenAcc, domain FID and a sample grid of the current T2I model, on `per_class` images of
        every class (the same seeded prompts and noise in every round and strategy of a seed)."""
        m, cfg = self.models, self.config
        if m.judge is None or m.reference_features is None:
            return Diagnostics()
        start = time.perf_counter()
        prompts, labels = class_prompt_set(per_class, self.world.num_classes, self.world.class_prompt)
        images = self.generations.images(
            prompts,
            cfg.seed + 777,
            steps=cfg.sampling_steps,
            guidance=cfg.guidance_scale,
            batch_size=cfg.generation_batch_size,
        )
        metrics = score_t2i(
            m.judge,
            m.reference_features,
            images,
            labels,
            grid_path=self.recorder.run_dir / "samples" / f"round_{server_round:03d}.png",
            image_size=cfg.image_size,
        )
        per_class = np.asarray(metrics["per_class_acc"])
        groups = {
            f"gen_acc_{name}": float(np.nanmean(per_class[rows]))
            for name, rows in self.class_groups(np.arange(len(per_class))).items()
        }
        scores = {"gen_acc": metrics["gen_acc"], "fid": metrics["fid"], "per_class_gen_acc": metrics["per_class_acc"]}
        scores |= groups | self.standard_metrics(images, prompts)
        log(INFO, "round %d: T2I GenAcc %.3f, domain FID %.2f", server_round, metrics["gen_acc"], metrics["fid"])
        return Diagnostics({**scores, "time_t2i_eval_s": time.perf_counter() - start})

    def standard_metrics(self, images: np.ndarray, prompts: list[str]) -> dict[str, float]:
        """CLIP score (``clip-model``) and Inception FID (``standard-fid``) where their weights load."""
        out, device = {}, self.models.pipe.device
        if self.config.clip_model:
            score = clip_score(images, prompts, self.config.clip_model, device)
            if score.value is not None:
                out["clip_score"] = score.value
        if self.config.standard_fid:
            real = np.asarray(self.world.load_split(splits.REFERENCE).with_format("numpy")[:]["image"], np.uint8)
            fid = standard_fid(real, resize_images(images, real.shape[1]), device)
            if fid.value is not None:
                out["inception_fid"] = fid.value
        return out

    def configure_train(self, server_round, arrays, config, grid) -> Iterable[Message]:
        if server_round == 1 and self.config.t2i_eval_initial:
            self.recorder.record(0, self.evaluate_t2i(0, self.config.t2i_final_eval_per_class))
        return super().configure_train(server_round, arrays, config, grid)

    def after_evaluate(self, server_round: int) -> None:
        every = self.config.t2i_eval_every
        t2i_changes = self.use_t2i_update and self.config.t2i_steps_per_round > 0
        if not t2i_changes:
            return
        if server_round == self.config.num_server_rounds:
            self.recorder.record(server_round, self.evaluate_t2i(server_round, self.config.t2i_final_eval_per_class))
        elif every and server_round % every == 0:
            self.recorder.record(server_round, self.evaluate_t2i(server_round, self.config.t2i_eval_per_class))
