"""The shipped toy server models: exported from a build, installed only for their exact spec."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from fedmmkt_strategy.config import RunConfig, project_defaults
from fedmmkt_strategy.generative import prebuilt, pretrain
from fedmmkt_strategy.generative.server_models import pretrain_spec
from fedmmkt_strategy.generative.t2i import generate_images, load_pipeline
from tests.generative.test_pretrain import MICRO, PHASES


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """MICRO built from scratch into one cache and exported into a bundle folder."""
    cache, shelf = tmp_path_factory.mktemp("built"), tmp_path_factory.mktemp("shelf")
    pretrain.ensure_pretrained(MICRO, cache, progress=False, use_prebuilt=False)
    bundle = pretrain.export_prebuilt(MICRO, cache, shelf, progress=False)
    return cache / MICRO.key(), bundle


def _no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a prebuilt install must not train")

    for owner, name in [
        (pretrain.jdg, "train_judge"),
        (pretrain.t2i, "train_vae"),
        (pretrain.t2i, "pretrain_denoiser"),
        (pretrain.cap, "train_captioner"),
    ]:
        monkeypatch.setattr(owner, name, refuse)


def test_an_export_holds_float16_weights_scored_again_and_their_digests(exported):
    built, bundle = exported
    manifest = prebuilt.read_manifest(bundle)
    assert bundle.name == f"toy-{MICRO.key()}" and manifest["spec"] == MICRO.as_dict()
    assert manifest["build_command"] == "fedmmkt pretrain --force --export-prebuilt"
    assert prebuilt.bundle_problem(bundle, MICRO.as_dict(), MICRO.key()) is None
    with safe_open(bundle / "t2i" / "unet" / "diffusion_pytorch_model.safetensors", "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float16}
    shipped = manifest["phases"]["eval"]
    assert shipped["num_images"] == 24 and 0.0 <= shipped["gen_acc"] <= 1.0
    assert manifest["full_precision"]["eval"]["num_images"] == 24
    assert all("build_seconds" in manifest["phases"][name] for name in PHASES)
    assert not (bundle / "judge" / "reference_features.npy").exists()  # recomputed on install
    assert not absolute_paths_in_configs(bundle)


def absolute_paths_in_configs(bundle) -> list[str]:
    """Every config of `bundle` that names an absolute path (e.g. the builder's cache)."""
    return [
        str(path)
        for path in bundle.rglob("*.json")
        if Path(str(json.loads(path.read_text()).get("_name_or_path", ""))).is_absolute()
    ]


def test_a_fresh_cache_installs_the_bundle_without_training(exported, tmp_path, monkeypatch, caplog):
    built, bundle = exported
    monkeypatch.setattr(prebuilt, "bundle_roots", lambda: [bundle.parent])
    _no_training(monkeypatch)
    with caplog.at_level(logging.INFO):
        models = pretrain.ensure_pretrained(MICRO, tmp_path, progress=False)
    assert any("installing the prebuilt toy server models" in r.getMessage() for r in caplog.records)
    report = models.load_report()["phases"]
    assert all(report[name]["source"] == f"prebuilt {bundle.name}" for name in PHASES)
    assert report["eval"]["gen_acc"] == prebuilt.read_manifest(bundle)["phases"]["eval"]["gen_acc"]
    np.testing.assert_array_equal(
        np.load(models.reference_features), np.load(built / "judge" / "reference_features.npy")
    )
    installed, shipped = load_pipeline(str(models.t2i)), load_pipeline(str(bundle / "t2i"), dtype=torch.float32)
    assert installed.unet.dtype == torch.float32
    prompt = ["a red flower with three round petals"]
    np.testing.assert_array_equal(
        generate_images(installed, prompt, seed=0, num_inference_steps=2),
        generate_images(shipped, prompt, seed=0, num_inference_steps=2),
    )
    with pytest.raises(ValueError, match="installed from a prebuilt bundle"):
        pretrain.export_prebuilt(MICRO, tmp_path, tmp_path / "again", progress=False)


def test_a_bundle_of_another_spec_or_with_a_changed_file_is_never_loaded(exported, tmp_path, caplog):
    _, bundle = exported
    other = dataclasses.replace(MICRO, t2i_steps=3)
    assert prebuilt.find_bundle(other.as_dict(), other.key(), [bundle.parent]) is None
    copy = tmp_path / bundle.name
    shutil.copytree(bundle, copy)
    assert prebuilt.find_bundle(MICRO.as_dict(), MICRO.key(), [tmp_path]) == copy
    weights = copy / "captioner" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with caplog.at_level(logging.WARNING):
        assert prebuilt.find_bundle(MICRO.as_dict(), MICRO.key(), [tmp_path]) is None
    assert "does not match its SHA-256" in caplog.text
    (copy / "captioner" / "model.safetensors").unlink()  # a FAB carries the JSON files but no weights
    assert "is missing" in prebuilt.bundle_problem(copy, MICRO.as_dict(), MICRO.key())


def test_force_builds_from_scratch_even_with_a_bundle(exported, tmp_path, monkeypatch):
    _, bundle = exported
    monkeypatch.setattr(prebuilt, "bundle_roots", lambda: [bundle.parent])
    models = pretrain.ensure_pretrained(MICRO, tmp_path, progress=False, use_prebuilt=False)
    assert not any("source" in meta for meta in models.load_report()["phases"].values())


def test_the_installed_project_finds_its_bundles_from_outside_the_package(tmp_path):
    """`flwr run` imports the app from its FAB (code and JSON only): the installed project's
    bundle folder must still be found."""
    assert prebuilt.default_bundle_root() in prebuilt.bundle_roots(module_dir=tmp_path)


def test_the_default_run_config_has_its_shipped_bundle():
    """A recipe or default change that alters the spec key must ship a rebuilt bundle
    (`fedmmkt pretrain --force --export-prebuilt`), or new users pre-train for half an hour."""
    spec = pretrain_spec(RunConfig.from_run_config(project_defaults()))
    bundle = prebuilt.find_bundle(spec.as_dict(), spec.key())
    assert bundle is not None, f"no intact prebuilt bundle for the default spec {spec.key()}"
    manifest = prebuilt.read_manifest(bundle)
    assert manifest["phases"]["eval"]["num_images"] >= 240
    assert json.dumps(manifest["spec"], sort_keys=True) == json.dumps(spec.as_dict(), sort_keys=True)
    assert not absolute_paths_in_configs(bundle)  # nothing of the building machine is shipped
