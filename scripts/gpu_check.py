"""One FedMMKT round of the paper-flowers profile on tiny subsets, offline, with figures.

The GPU machine cannot reach the Hugging Face hub either, so the check builds stand-ins of the
paper models from config (`lab.paper_standins`: Stable Diffusion 1.x architecture,
BLIP, CLIP, a flowers-schema parquet file), saves them to folders and runs the real paper code
path on them: `load_dataset` on parquet, `from_pretrained` by folder, bf16 on CUDA, memory-aware
batch sizes, LoRA fine-tuning (peft), ResNet-18 / ViT-S / BERT clients, GenAcc with a judge
trained on held-out images, CLIP score, and the Inception-FID fallback. One round runs in-process
(no Ray); the clients train on the same device as the server (``--client-device`` to change it),
and the report gives their time per phase (query, distillation training, evaluation; the first
query includes each client's warm-up). It prints the figures as JSON and writes them to
``$OUT/gpu_check.json`` when OUT is set.

    python scripts/gpu_check.py                       # CUDA, SD-1.5 widths at 256 px
    python scripts/gpu_check.py --device cpu --scale tiny
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedmmkt_strategy.config import RunConfig, load_preset  # noqa: E402
from fedmmkt_strategy.generative.server_models import load_server_models  # noqa: E402
from fedmmkt_strategy.generative.t2i import LORA_ADAPTER, generate_images  # noqa: E402
from fedmmkt_strategy.runs.inprocess import run_inprocess  # noqa: E402
from lab.paper_standins import build_standins  # noqa: E402

#: Per scale: T2I resolution, client image size, client width scale, synthetic samples, steps;
#: and the client layout: presets/gpu-check.toml.
_PRESET = load_preset("gpu-check")
SCALES: dict[str, dict] = _PRESET["scales"]
LAYOUT: str = _PRESET["layout"]


#: The server's phase times that are the clients' own work (the in-process grid runs them in turn).
CLIENT_PHASES = {
    "query_and_warmup_s": "time_query_s",
    "distill_train_s": "time_distill_phase_s",
    "evaluate_s": "time_evaluate_phase_s",
}


def run_config(keys: dict, scale: dict, device: str, results: Path, client_device: str) -> dict:
    """The flowers preset's shape at smoke size: one round, four clients (ResNet-18, ViT-S, 2x BERT)."""
    return {
        **keys,
        "client-layout": LAYOUT,
        "client-width-scale": scale["width"],
        "num-server-rounds": 1,
        "client-warmup-epochs": 1,
        "local-epochs": 1,
        "batch-size": 16,
        "synthetic-size": scale["synthetic"],
        "sampling-steps": scale["sampling"],
        "generation-batch-size": scale["batch"],
        "t2i-steps-per-round": scale["t2i_steps"],
        "t2i-batch-size": scale["batch"],
        "t2i-lora": "on",
        "t2i-eval-every": 1,
        "t2i-eval-per-class": 2,
        "t2i-final-eval-per-class": 2,
        "pretrain-judge-epochs": 3,
        "fusion-steps": 5,
        "labvote-beta": 1.0,  # random-weight clients are unsure of everything; count every vote so LoRA trains
        "standard-fid": True,
        "server-device": device,
        "client-device": client_device,
        "node-settle": 0.0,
        "min-nodes": 4,
        "results-dir": str(results),
        "run-name": "gpu-check",
    }


def lora_summary(pipe) -> dict:
    """How many LoRA parameters the UNet carries and whether training moved them (B starts at zero)."""
    lora = {n: p for n, p in pipe.unet.named_parameters() if "lora_" in n}
    b_norm = sum(float(p.float().norm()) for n, p in lora.items() if "lora_B" in n)
    attached = LORA_ADAPTER in (getattr(pipe.unet, "peft_config", None) or {})
    return {"lora_attached": attached, "lora_params": sum(p.numel() for p in lora.values()), "lora_B_norm": b_norm}


def benchmark_generation(pipe, prompts: list[str], steps: int, batch: int) -> dict:
    """Images/s of class-prompted generation with CFG at the pipeline's size, and its peak memory."""
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    images = generate_images(pipe, prompts, seed=1, num_inference_steps=steps, guidance_scale=3.0, batch_size=batch)
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {"images": len(images), "size": int(images.shape[1]), "steps": steps, "seconds": seconds}
    out["images_per_s"] = len(images) / seconds
    if pipe.device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--scale", choices=tuple(SCALES), default=None, help="default: sd on CUDA, tiny on CPU")
    parser.add_argument("--workdir", default=None, help="where stand-ins and results go (default: a temp dir)")
    parser.add_argument(
        "--client-device",
        choices=("same", "cpu", "cuda"),
        default="same",
        help="where the clients train (default: the server's device)",
    )
    args = parser.parse_args()
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    scale_name = args.scale or ("sd" if device == "cuda" else "tiny")
    scale = SCALES[scale_name]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fedmmkt-gpu-check-"))
    report: dict = {"device": device, "scale": scale_name, "torch": torch.__version__}
    if device == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    times: dict[str, float] = {}

    start = time.perf_counter()
    keys = build_standins(work / "standins", scale_name, scale["t2i_size"], scale["data_size"], per_class=16)
    times["build_and_save_standins_s"] = time.perf_counter() - start

    client_device = device if args.client_device == "same" else args.client_device
    report["client_device"] = client_device
    config_dict = run_config(keys, scale, device, work / "results", client_device)
    start = time.perf_counter()
    models = load_server_models(RunConfig.from_run_config(config_dict))  # includes judge training
    times["load_server_models_and_judge_s"] = time.perf_counter() - start
    pipe = models.pipe
    report["t2i_dtype"] = str(pipe.unet.dtype)
    report["unet_params_m"] = sum(p.numel() for p in pipe.unet.parameters()) / 1e6

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run_dir = run_inprocess(config_dict, num_nodes=4, models=models)
    times["round_total_s"] = time.perf_counter() - start
    if device == "cuda":
        report["round_peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30

    metrics = json.loads((run_dir / "metrics.json").read_text())
    server = {k: v for r in metrics["rounds"] for k, v in r["server"].items() if not isinstance(v, list)}
    times.update({k: v for k, v in server.items() if k.startswith("time_")})
    report["server_metrics"] = {k: v for k, v in server.items() if not k.startswith("time_")}
    report["clients"] = [
        {k: c.get(k) for k in ("node_id", "architecture", "modality", "acc_global", "acc_local")}
        for r in metrics["rounds"]
        for c in r["clients"]
        if "acc_global" in c
    ]
    report["failures"] = metrics["failures"]
    report["synthesis_images_per_s"] = scale["synthetic"] / times["time_synthesis_s"]
    report["lora"] = lora_summary(pipe)
    prompts = [f"a photo of a {n}" for n in ("pink primrose", "sweet pea", "tiger lily", "moon orchid")] * 4
    report["generation_benchmark"] = benchmark_generation(pipe, prompts, scale["sampling"], 16)
    report["times"] = times
    report["client_phase_times"] = {name: times.get(key) for name, key in CLIENT_PHASES.items()}
    report["ok"] = not metrics["failures"] and report["lora"]["lora_B_norm"] > 0 and bool(report["clients"])
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(text)
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
