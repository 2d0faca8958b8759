"""Byzantine clients with and without the reliability defence: honest accuracy and GenAcc.

Five in-process clients (the test federation's four roles plus a second image CNN), one of
which (20 %) answers every `query.infer` with confident wrong votes (`faults.ByzantineClientApp`).
Three runs on the same seed: no attack, attack without defence, attack with
`labvote-robust = "reliability"`. Uses the pre-trained toy server models from the cache
(built by `fedmmkt pretrain`; this script refuses to start a 17-minute pre-training).

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/byzantine_experiment.py --out byzantine-results

Writes ``<out>/byzantine.json`` and prints a Markdown table (docs/robustness.md holds one).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.faults import ByzantineClientApp
from fedmmkt_strategy.generative.pretrain import default_cache_root
from fedmmkt_strategy.inprocess import InProcessGrid, load_client_app
from fedmmkt_strategy.runner import run_federation
from fedmmkt_strategy.server_models import load_server_models, pretrain_spec

BASE = {
    "client-layout": "image:cnn,text:bow,image:cnn-small,text:gru",
    "pool-size": 2000,
    "test-per-class": 10,
    "local-epochs": 1,
    "num-server-rounds": 2,
    "synthetic-size": 96,
    "t2i-eval-per-class": 4,
    "t2i-final-eval-per-class": 4,
    "node-settle": 0.0,
}
NODES, BYZANTINE = 5, [104]
VARIANTS = {
    "no attack": ([], "none"),
    "attack, no defence": (BYZANTINE, "none"),
    "attack, reliability defence": (BYZANTINE, "reliability"),
}


def run_variant(name: str, liars: list[int], robust: str, out: Path) -> dict[str, float]:
    """One run; the honest clients' final accuracy, GenAcc and how much of the vote the liar took."""
    rc = {
        **BASE,
        "labvote-robust": robust,
        "results-dir": str(out / "runs"),
        "run-name": name.replace(",", "").replace(" ", "-"),
    }
    config = RunConfig.from_run_config(rc)
    app = ByzantineClientApp(load_client_app(), liars, seed=config.seed)
    grid = InProcessGrid(app, rc, NODES)
    started = time.time()
    metrics = json.loads((run_federation(grid, rc, load_server_models(config)) / "metrics.json").read_text())
    last = metrics["rounds"][-1]
    honest = [c for c in last["clients"] if c["node_id"] not in liars and "acc_global" in c]
    liar_rows = [c for c in last["clients"] if c["node_id"] in liars]
    gen = [r["server"]["gen_acc"] for r in metrics["rounds"] if "gen_acc" in r["server"]]
    return {
        "honest_image_acc": float(np.mean([c["acc_global"] for c in honest if c["modality"] == "image"])),
        "honest_text_acc": float(np.mean([c["acc_global"] for c in honest if c["modality"] == "text"])),
        "gen_acc_round0": gen[0],
        "gen_acc": gen[-1],
        "vote_prompt_agreement": last["server"]["vote_prompt_agreement"],
        "liar_counted_vote_share": float(np.mean([c["counted_vote_share"] for c in liar_rows])) if liars else 0.0,
        "liar_reliability": float(np.mean([c["reliability"] for c in liar_rows]))
        if liars and robust != "none"
        else 1.0,
        "honest_reliability_min": min((c.get("reliability", 1.0) for c in honest), default=1.0),
        "wall_s": time.time() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("byzantine-results"))
    args = parser.parse_args()
    spec = pretrain_spec(RunConfig.from_run_config(BASE))
    if not (default_cache_root() / spec.key() / "report.json").exists():
        raise SystemExit("the pre-trained toy server models are not cached: run `fedmmkt pretrain` first")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {name: run_variant(name, liars, robust, args.out) for name, (liars, robust) in VARIANTS.items()}
    (args.out / "byzantine.json").write_text(json.dumps(results, indent=2))
    keys = list(next(iter(results.values())))
    print("| variant | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
