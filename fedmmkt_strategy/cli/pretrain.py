"""``fedmmkt pretrain``: build the toy world's server models (judge, VAE, T2I, captioner) into the
cache, with the budgets of the project's run config unless a flag overrides them.

The recipe itself is `fedmmkt_strategy.generative.pretrain`; this module is only its command line."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

from flwr.common.config import parse_config_args

from fedmmkt_strategy.config import RunConfig, project_defaults
from fedmmkt_strategy.generative.prebuilt import default_bundle_root
from fedmmkt_strategy.generative.pretrain import (
    EVAL,
    PretrainSpec,
    default_cache_root,
    ensure_pretrained,
    export_prebuilt,
)
from fedmmkt_strategy.generative.server_models import pretrain_spec

BUDGET_FLAGS = ("judge_epochs", "vae_steps", "t2i_steps", "captioner_steps", "eval_per_class", "seed")


def parse_args(
    argv: list[str] | None = None, defaults: PretrainSpec | None = None
) -> tuple[PretrainSpec, argparse.Namespace]:
    """The spec and options of ``fedmmkt pretrain``; every budget flag defaults to `defaults`' value
    (the spec the project's run config asks for, when called by the ``fedmmkt`` command)."""
    defaults = defaults or PretrainSpec()
    parser = argparse.ArgumentParser(
        prog="fedmmkt pretrain",
        description="Build the toy world's server models (judge, T2I, captioner) into the cache.",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"cache root ({default_cache_root()})")
    parser.add_argument(
        "--force", action="store_true", help="discard this spec's cached models and retrain from scratch (no prebuilt)"
    )
    parser.add_argument(
        "--export-prebuilt",
        type=Path,
        nargs="?",
        const=default_bundle_root(),
        default=None,
        metavar="DIR",
        help=f"write the built models as a prebuilt bundle (float16, scored again) into DIR ({default_bundle_root()})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--run-config", default="", help="run-config overrides whose server models to build, e.g. 'pretrain-seed=1'"
    )
    for field in BUDGET_FLAGS:
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=getattr(defaults, field))
    args = parser.parse_args(argv)
    return dataclasses.replace(defaults, **{f: getattr(args, f) for f in BUDGET_FLAGS}), args


def main(argv: list[str] | None = None, defaults: PretrainSpec | None = None) -> int:
    """``fedmmkt pretrain``: build the toy world's server models into the cache and print the report."""
    spec, args = parse_args(argv, defaults)
    if args.force:
        shutil.rmtree((args.cache_dir or default_cache_root()) / spec.key(), ignore_errors=True)
    models = ensure_pretrained(spec, args.cache_dir, progress=not args.quiet, use_prebuilt=not args.force)
    if args.export_prebuilt is not None:
        bundle = export_prebuilt(spec, args.cache_dir, args.export_prebuilt, progress=not args.quiet)
        print(f"prebuilt bundle: {bundle}")
    report = models.load_report()
    evaluation = report["phases"][EVAL]
    print(f"T2I pipeline: {models.t2i}\ncaptioner:    {models.captioner}\njudge:        {models.judge}")
    print(
        f"GenAcc {evaluation['gen_acc']:.3f}  domain FID {evaluation['fid']:.2f}  "
        f"({evaluation['num_images']} images, {evaluation['sampler']}); "
        f"pre-training took {report['total_seconds']:.0f} s in total"
    )
    print(f"report: {models.report}")
    return 0


def pretrain_command(argv: list[str]) -> int:
    """``fedmmkt pretrain``: build the server models the project's run config (plus ``--run-config``
    overrides, e.g. another world's ``pretrain-seed``) asks for; budget flags override it."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--run-config", default="")
    known, _ = parser.parse_known_args(argv)
    overrides = parse_config_args([known.run_config]) if known.run_config else {}
    config = RunConfig.from_run_config({**project_defaults(), **overrides})
    return main(argv, pretrain_spec(config))
