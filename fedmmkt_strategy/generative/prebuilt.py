"""Prebuilt toy server models: what ``fedmmkt pretrain`` built here, shipped with the project.

Pre-training the toy world's judge, VAE, T2I model and captioner from scratch takes over half an
hour on a 2-core machine, and a new user's first run should not wait for it. So the repository
ships the output of ``fedmmkt pretrain --force --export-prebuilt``, built from this repository's
own code and public split (never weights from elsewhere): the weights in float16 (about 7 MB), the
spec they were built for, the build command, commit and machine, and their quality measured on
the shipped weights themselves. A bundle is one folder ``toy-<spec key>/`` with a
``manifest.json``; `find_bundle` returns it only when its spec equals, field by field, the spec a
run asks for and every file's SHA-256 matches. Any other spec (another ``pretrain-seed``, other
budgets, a changed recipe, which changes the key) is pre-trained as before, and
``fedmmkt pretrain --force`` always rebuilds from scratch.

This module only reads and writes bundles; `fedmmkt_strategy.generative.pretrain` decides when
to install or export one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from collections.abc import Iterable
from logging import DEBUG, WARNING
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from flwr.common.logger import log

MANIFEST = "manifest.json"
_WITHOUT_WEIGHTS = " (a copy without the weights, e.g. a FAB)"
#: Where bundles live inside the package (so a wheel carries them too).
PACKAGE_SUBDIR = Path("fedmmkt_strategy") / "generative" / "prebuilt"
_DISTRIBUTION = "fedmmkt"


def bundle_name(spec_key: str) -> str:
    return f"toy-{spec_key}"


def default_bundle_root() -> Path:
    """The package's own ``prebuilt/`` folder: where ``--export-prebuilt`` writes by default."""
    return Path(__file__).resolve().parent / "prebuilt"


def bundle_roots(module_dir: Path | None = None) -> list[Path]:
    """Folders that may hold bundles, in order: beside this module (a source checkout or an
    installed wheel), then the installed ``fedmmkt`` distribution's copy.

    The second matters under ``flwr run``: the ServerApp imports the project from its FAB, which
    carries only code and config files (``*.py``, ``*.toml``, ``*.json``...), not weights, while
    the project installed in the environment (editable or from a wheel) has them."""
    roots = [(module_dir or Path(__file__).resolve().parent) / "prebuilt"]
    try:
        dist = importlib.metadata.distribution(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return roots
    source = _editable_source(dist.read_text("direct_url.json"))
    if source is not None:
        roots.append(source / PACKAGE_SUBDIR)
    roots.append(Path(str(dist.locate_file(PACKAGE_SUBDIR))))
    return list(dict.fromkeys(root.resolve() for root in roots))


def _editable_source(direct_url: str | None) -> Path | None:
    """The source folder of an editable install, from its PEP 610 ``direct_url.json``."""
    if not direct_url:
        return None
    info = json.loads(direct_url)
    url = urlparse(info.get("url", ""))
    if url.scheme != "file" or not info.get("dir_info", {}).get("editable"):
        return None
    return Path(unquote(url.path))


def find_bundle(spec: dict[str, Any], spec_key: str, roots: Iterable[Path] | None = None) -> Path | None:
    """The first bundle built for exactly this spec whose files are all intact, or None.

    A bundle whose manifest names this key but differs or is damaged is skipped with a logged
    warning (the caller then pre-trains), never loaded. One without its weights is the FAB's copy
    of the code (`bundle_roots`): skipped quietly, the installed project's copy comes next."""
    for root in roots if roots is not None else bundle_roots():
        bundle = root / bundle_name(spec_key)
        if not (bundle / MANIFEST).is_file():
            continue
        problem = bundle_problem(bundle, spec, spec_key)
        if problem is None:
            return bundle
        log(
            DEBUG if problem.endswith(_WITHOUT_WEIGHTS) else WARNING,
            "prebuilt models in %s not used: %s",
            bundle,
            problem,
        )
    return None


def bundle_problem(bundle: Path, spec: dict[str, Any], spec_key: str) -> str | None:
    """Why `bundle` must not stand in for a pre-training of `spec` (None when it may)."""
    manifest = read_manifest(bundle)
    if manifest.get("spec_key") != spec_key or manifest.get("spec") != spec:
        return f"it was built for spec {manifest.get('spec_key')}, this run asks for {spec_key}"
    for name, digest in manifest.get("files", {}).items():
        path = bundle / name
        if not path.is_file():
            return f"{name} is missing{_WITHOUT_WEIGHTS}"
        if sha256(path) != digest:
            return f"{name} does not match its SHA-256 in {MANIFEST}"
    return None


def read_manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / MANIFEST).read_text())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below `folder` except the manifest, by relative POSIX path."""
    return {
        path.relative_to(folder).as_posix(): sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def relative_config_paths(folder: Path) -> None:
    """diffusers writes the folder a model was loaded from into its configs' `_name_or_path`: in a
    bundle, the building machine's cache path. Point each at its own folder, relative to the
    bundle, so a shipped bundle names no machine's paths (loading overrides the field anyway)."""
    for path in sorted(folder.rglob("*.json")):
        config = json.loads(path.read_text())
        if isinstance(config, dict) and Path(str(config.get("_name_or_path", ""))).is_absolute():
            config["_name_or_path"] = path.parent.relative_to(folder).as_posix()
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def publish(tmp: Path, final: Path, manifest: dict[str, Any]) -> Path:
    """Write the manifest (with every file's digest) into `tmp` and move it to `final`,
    replacing an older bundle of the same spec."""
    relative_config_paths(tmp)
    manifest = {**manifest, "files": file_digests(tmp)}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final
