"""The `fedmmkt` command: `fedmmkt pretrain` (build the toy server models into the cache),
`fedmmkt compare` (strategies side by side, in-process, into one folder) and `fedmmkt deploy`
(a SuperLink and SuperNodes as real processes on this machine)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from flwr.common.config import parse_config_args

from fedmmkt_strategy.config import project_defaults

USAGE = """usage: fedmmkt <command> [options]

commands:
  pretrain   build the toy world's server models (judge, T2I, captioner) into the cache
  compare    run several strategies on the same seeds and partitions; write a table and a plot
  deploy     start (or stop) a SuperLink and N SuperNodes on loopback, optionally with TLS and node auth
  report     write report.html (one self-contained page) for a results folder or a comparison folder
"""


def compare_main(argv: list[str]) -> int:
    from fedmmkt_strategy.cli.compare import PRESETS, compare, merge_results, write_outputs
    from fedmmkt_strategy.reporting.report import write_report

    parser = argparse.ArgumentParser(prog="fedmmkt compare", description=__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    parser.add_argument("--out", type=Path, default=Path("comparison"), help="output folder (default ./comparison)")
    parser.add_argument("--variants", help="comma-separated strategies/ablations (default: the preset's)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
    parser.add_argument("--run-config", default="", help="run-config overrides for every run, 'key=value ...'")
    parser.add_argument(
        "--merge",
        help="comma-separated folders of partial comparisons (e.g. seeds run in parallel): "
        "merge their comparison.json into --out and redraw table and plots; runs nothing",
    )
    args = parser.parse_args(argv)
    if args.merge:
        folders = [Path(f) for f in args.merge.split(",")]
        results = merge_results([json.loads((f / "comparison.json").read_text()) for f in folders])
        seeds = sorted({r["seed"] for runs in results.values() for r in runs})
        header = (
            f"Comparison over seeds {seeds}, {len(results)} variants; final-round global-test accuracy; "
            f"merged from {', '.join(f.name for f in folders)}."  # folder names: the header is committed
        )
        write_outputs(results, args.out, header)
        print(f"merged comparison written to {args.out}/")
        print(f"report: {write_report(args.out)}")
        return 0
    preset = PRESETS[args.preset]
    if args.variants:
        preset = dataclasses.replace(preset, variants=args.variants.split(","))
    if args.seeds:
        preset = dataclasses.replace(preset, seeds=[int(s) for s in args.seeds.split(",")])
    base = {**project_defaults(), **parse_config_args([args.run_config] if args.run_config else None)}
    compare(preset, args.out, base)
    print(f"comparison written to {args.out}/ (table.md, comparison.png, comparison.json, runs/)")
    print(f"report: {write_report(args.out)}")
    return 0


def deploy_main(argv: list[str]) -> int:
    from fedmmkt_strategy.cli.deploy import (
        DeploySettings,
        start_deployment,
        stop_deployment,
        submit_instructions,
    )
    from fedmmkt_strategy.cli.flower_processes import FlowerProcessError

    parser = argparse.ArgumentParser(prog="fedmmkt deploy", description="Real Flower processes on loopback.")
    sub = parser.add_subparsers(dest="action", required=True)
    start = sub.add_parser("start", help="start a SuperLink and N SuperNodes; pids and logs go to --dir")
    start.add_argument("--dir", type=Path, default=Path("deployment"), help="folder for pids, logs, certs, keys")
    start.add_argument("--nodes", type=int, default=4, help="number of SuperNodes (default 4)")
    start.add_argument("--layout", help="modality:architecture,... for the nodes (default: client-layout)")
    start.add_argument("--insecure", action="store_true", help="no TLS and no SuperNode authentication")
    start.add_argument("--port", type=int, default=18000, help="SuperLink port on 127.0.0.1 (default 18000)")
    start.add_argument("--node-port-base", type=int, default=19100, help="first SuperNode runtime API port")
    stop = sub.add_parser("stop", help="stop every process of the deployment in --dir, by pid")
    stop.add_argument("--dir", type=Path, default=Path("deployment"))
    certs = sub.add_parser("certs", help="a CA and a SuperLink TLS certificate, for a SuperLink on a real host")
    certs.add_argument("--dir", type=Path, default=Path("certs"))
    certs.add_argument("--name", action="append", required=True, help="an IP or DNS name of the SuperLink (repeat)")
    key = sub.add_parser("key", help="a SuperNode key pair (OpenSSH EC); register the .pub with the SuperLink")
    key.add_argument("--out", type=Path, required=True, help="private key path; the public key gets .pub")
    args = parser.parse_args(argv)
    if args.action == "stop":
        print(f"stopped {len(stop_deployment(args.dir))} processes")
        return 0
    if args.action == "certs":
        from fedmmkt_strategy.cli.pki import make_server_credentials

        creds = make_server_credentials(args.dir, tuple(args.name))
        print(f"CA {creds.ca_cert} (for SuperNodes and flwr users); SuperLink: {creds.server_cert}, {creds.server_key}")
        return 0
    if args.action == "key":
        from fedmmkt_strategy.cli.pki import make_node_key

        print(f"private key {args.out} (stays on the device); register {make_node_key(args.out, args.out.name)}")
        return 0
    layout = args.layout or project_defaults().get("client-layout")
    if not layout:
        parser.error("--layout is required outside the project folder (no pyproject.toml client-layout here)")
    try:
        settings = DeploySettings(
            folder=args.dir,
            num_nodes=args.nodes,
            layout=layout,
            secure=not args.insecure,
            port=args.port,
            node_port_base=args.node_port_base,
        )
        print(submit_instructions(start_deployment(settings)))
    except (ValueError, FlowerProcessError) as err:  # DeployError is one; ValidationError a ValueError
        print(f"fedmmkt deploy: {err}", file=sys.stderr)
        return 1
    return 0


def report_main(argv: list[str]) -> int:
    """``fedmmkt report FOLDER``: (re)write the report.html of a run's or a comparison's folder."""
    from fedmmkt_strategy.reporting.report import ReportError, write_report

    parser = argparse.ArgumentParser(
        prog="fedmmkt report",
        description="Write FOLDER/report.html: one self-contained page (no network access) with a run's "
        "config, accuracy, T2I scores, sample grids and diagnostics, or a comparison's table and plots.",
    )
    parser.add_argument("folder", type=Path, help="a results folder (metrics.json) or a comparison folder")
    args = parser.parse_args(argv)
    try:
        print(write_report(args.folder))
    except ReportError as err:
        print(f"fedmmkt report: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    console = logging.StreamHandler()
    console.addFilter(lambda record: not record.name.startswith("flwr"))  # Flower's own handler prints those
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", handlers=[console])
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "pretrain":
        from fedmmkt_strategy.cli.pretrain import pretrain_command

        return pretrain_command(rest)
    if command == "compare":
        return compare_main(rest)
    if command == "deploy":
        return deploy_main(rest)
    if command == "report":
        return report_main(rest)
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
