"""Byzantine clients of every kind, with and without the defence: honest accuracy and GenAcc.

Ten in-process clients (the test federation's four roles, repeated), of which two (20 %: nodes
108, an image CNN, and 109, a text bag-of-words) attack with one of `faults.ATTACKS` in every
`query.infer`. Per seed: one clean run, then per attack kind a run without defence and one with
`labvote-robust = "reliability"` (which weighs both the vote and the fusion). Uses the
pre-trained toy server models from the cache (built by `fedmmkt pretrain`; this script refuses
to start a pre-training).

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/byzantine_experiment.py --out byzantine-results
    # one kind, one seed, two rounds (a few minutes): --attacks confident-liar --seeds 0 --rounds 2

Writes ``<out>/byzantine.json`` (every run) and prints a Markdown table of the means over seeds
with their spread (docs/robustness.md holds one): honest clients' accuracy and GenAcc, each as
the change against the clean run of the same seed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.generative.pretrain import default_cache_root
from fedmmkt_strategy.generative.server_models import load_server_models, pretrain_spec
from fedmmkt_strategy.generative.synthesis import class_balanced_prompts
from fedmmkt_strategy.reporting.progress import say, track
from fedmmkt_strategy.runs.inprocess import InProcessGrid, load_client_app
from fedmmkt_strategy.runs.runner import run_federation
from lab.faults import ATTACKS, ByzantineClientApp

BASE = {
    "client-layout": "image:cnn,text:bow,image:cnn-small,text:gru",
    "pool-size": 2000,
    "test-per-class": 10,
    "local-epochs": 1,
    "synthetic-size": 96,
    "t2i-eval-per-class": 4,
    "t2i-final-eval-per-class": 4,
    "node-settle": 0.0,
    "checkpoint": False,
}
NODES = 10
ATTACKERS = [108, 109]  # 20 %: slots 0 and 1 of the layout, one image and one text client
DEFENCES = {"no defence": "none", "defence": "reliability"}


def run_one(name: str, attack: str | None, robust: str, seed: int, rounds: int, out: Path) -> dict[str, Any]:
    """One run; the honest clients' final accuracy, GenAcc, and the attackers' share and weights."""
    rc = {
        **BASE,
        "seed": seed,
        "num-server-rounds": rounds,
        "labvote-robust": robust,
        "results-dir": str(out / "runs"),
        "run-name": f"{name}-seed{seed}",
    }
    config = RunConfig.from_run_config(rc)
    attackers = ATTACKERS if attack else []
    app = load_client_app()
    if attack:
        prompts = class_balanced_prompts(config.synthetic_size, config.seed * 100003, config.world().num_classes)[1]
        app = ByzantineClientApp(app, attackers, seed=seed, attack=attack, prompt_classes=prompts)
    grid = InProcessGrid(app, rc, NODES)
    started = time.time()
    metrics = json.loads((run_federation(grid, rc, load_server_models(config)) / "metrics.json").read_text())
    return summarise(metrics, seed, attack, robust) | {"wall_s": time.time() - started}


def summarise(metrics: dict[str, Any], seed: int, attack: str | None, robust: str) -> dict[str, Any]:
    """One run's figures from its metrics.json. "Honest" is every node but the attacker slots, in
    the clean run too, so each change against it compares the same eight clients."""
    last = metrics["rounds"][-1]
    honest = [c for c in last["clients"] if c["node_id"] not in ATTACKERS and "acc_global" in c]
    bad = [c for c in last["clients"] if c["node_id"] in ATTACKERS]
    gen = [r["server"]["gen_acc"] for r in metrics["rounds"] if "gen_acc" in r["server"]]

    def mean_of(rows: list[dict], key: str) -> float:
        values = [c[key] for c in rows if key in c]
        return float(np.mean(values)) if values else float("nan")

    return {
        "seed": seed,
        "attack": attack,
        "robust": robust,
        "honest_image_acc": mean_of([c for c in honest if c["modality"] == "image"], "acc_global"),
        "honest_text_acc": mean_of([c for c in honest if c["modality"] == "text"], "acc_global"),
        "gen_acc_round0": gen[0],
        "gen_acc": gen[-1],
        "attacker_counted_vote_share": mean_of(bad, "counted_vote_share"),
        "attacker_reliability": mean_of(bad, "reliability"),
        "attacker_embedding_reliability": mean_of(bad, "embedding_reliability"),
        "honest_reliability_min": min((c.get("reliability", 1.0) for c in honest), default=1.0),
        "failures": len(metrics["failures"]),
    }


def resummarise(out: Path) -> list[dict[str, Any]]:
    """Every finished run under `out`/runs (its name says attack, defence and seed), summarised."""
    runs = []
    for path in sorted((out / "runs").glob("*-seed*/metrics.json")):
        name, _, seed = path.parent.name.rpartition("-seed")
        attack, robust = (None, "none") if name == "clean" else tuple(name.rsplit("-", 1))
        metrics = json.loads(path.read_text())
        if metrics["rounds"][-1]["round"] == metrics["config"]["num-server-rounds"]:
            runs.append(summarise(metrics, int(seed), attack, robust))
    return runs


def table(runs: list[dict[str, Any]]) -> str:
    """Markdown: per attack and defence, mean (and spread over seeds) of the honest clients'
    accuracy change and GenAcc's relative change against the clean run of the same seed."""
    clean = {r["seed"]: r for r in runs if r["attack"] is None}
    lines = [
        "| attack | defence | honest image acc, change (points) | honest text acc, change (points) "
        "| GenAcc, relative change | attackers' counted vote share | seeds |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
        v = scale * np.asarray(values)
        return f"{v.mean():+.{digits}f} ± {v.std():.{digits}f}"

    for attack in dict.fromkeys(r["attack"] for r in runs if r["attack"]):
        for label, robust in DEFENCES.items():
            rows = [r for r in runs if r["attack"] == attack and r["robust"] == robust and r["seed"] in clean]
            if not rows:
                continue
            image = [r["honest_image_acc"] - clean[r["seed"]]["honest_image_acc"] for r in rows]
            text = [r["honest_text_acc"] - clean[r["seed"]]["honest_text_acc"] for r in rows]
            gen = [r["gen_acc"] / clean[r["seed"]]["gen_acc"] - 1 for r in rows]
            share = np.mean([r["attacker_counted_vote_share"] for r in rows])
            seeds = ",".join(str(r["seed"]) for r in rows)
            cells = [attack, label, cell(image), cell(text), f"{cell(gen)} %", f"{share:.2f}", seeds]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("byzantine-results"))
    parser.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated, of {', '.join(ATTACKS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--summarise", action="store_true", help="rebuild byzantine.json and the table from <out>/runs, running nothing"
    )
    args = parser.parse_args(argv)
    if args.summarise:
        runs = resummarise(args.out)
        (args.out / "byzantine.json").write_text(json.dumps(runs, indent=2))
        print(table(runs))
        return
    attacks = args.attacks.split(",")
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        raise SystemExit(f"--attacks: unknown {unknown}; choose from {', '.join(ATTACKS)}")
    spec = pretrain_spec(RunConfig.from_run_config(BASE))
    if not (default_cache_root() / spec.key() / "report.json").exists():
        raise SystemExit("the pre-trained toy server models are not cached: run `fedmmkt pretrain` first")
    args.out.mkdir(parents=True, exist_ok=True)
    plan = [
        (seed, attack, robust)
        for seed in [int(s) for s in args.seeds.split(",")]
        for attack, robust in [(None, "none")] + [(a, r) for a in attacks for r in DEFENCES.values()]
    ]
    runs: list[dict[str, Any]] = []
    for seed, attack, robust in track(plan, "byzantine", "run", every=0):
        name = "clean" if attack is None else f"{attack}-{robust}"
        runs.append(run_one(name, attack, robust, seed, args.rounds, args.out))
        say(f"{name}, seed {seed}: image {runs[-1]['honest_image_acc']:.3f}, text {runs[-1]['honest_text_acc']:.3f}")
        (args.out / "byzantine.json").write_text(json.dumps(runs, indent=2))
    print(table(runs))


if __name__ == "__main__":
    main()
