"""The `fedmmkt` command: `fedmmkt pretrain` (build the toy server models into the cache) and
`fedmmkt compare` (strategies side by side, in-process, into one folder)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import tomllib
from flwr.common.config import parse_config_args

USAGE = """usage: fedmmkt <command> [options]

commands:
  pretrain   build the toy world's server models (judge, T2I, captioner) into the cache
  compare    run several strategies on the same seeds and partitions; write a table and a plot
"""


def _project_defaults() -> dict:
    """The run config of pyproject.toml, when run from the project folder."""
    pyproject = Path("pyproject.toml")
    if not pyproject.exists():
        return {}
    return tomllib.loads(pyproject.read_text()).get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})


def compare_main(argv: list[str]) -> int:
    from fedmmkt_strategy.compare import PRESETS, compare

    parser = argparse.ArgumentParser(prog="fedmmkt compare", description=__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    parser.add_argument("--out", type=Path, default=Path("comparison"), help="output folder (default ./comparison)")
    parser.add_argument("--variants", help="comma-separated strategies/ablations (default: the preset's)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
    parser.add_argument("--run-config", default="", help="run-config overrides for every run, 'key=value ...'")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    if args.variants:
        preset = dataclasses.replace(preset, variants=args.variants.split(","))
    if args.seeds:
        preset = dataclasses.replace(preset, seeds=[int(s) for s in args.seeds.split(",")])
    base = {**_project_defaults(), **parse_config_args([args.run_config] if args.run_config else None)}
    compare(preset, args.out, base)
    print(f"comparison written to {args.out}/ (table.md, comparison.png, comparison.json, runs/)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "pretrain":
        from fedmmkt_strategy.generative.pretrain import main as pretrain_main

        return pretrain_main(rest)
    if command == "compare":
        return compare_main(rest)
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
