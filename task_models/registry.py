"""The task-model registry: a name in the run-config client layout maps to a constructor.

Bring your own model by registering a builder before the apps start, for example in a module
the ClientApp imports::

    from task_models.registry import ModelSpec, register_task_model
    from task_models.models import TaskModel

    @register_task_model("my-cnn", modality="image")
    def build_my_cnn(spec: ModelSpec) -> TaskModel:
        backbone = MyBackbone()                       # any nn.Module: batch -> [N, d_k]
        return TaskModel(backbone, 256, spec.num_classes, spec.fusion_dim, "image")

and then use ``client-layout = "image:my-cnn,text:gru"`` in the run config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from task_models import models
from task_models.models import TaskModel
from worlds.modality import Modality
from worlds.sensor import SENSOR_DIM


@dataclass(frozen=True)
class ModelSpec:
    """What every builder is told: the label space, the fusion width, the text vocabulary, the image size,
    and for the paper-profile models whether to load pretrained weights and a width scale (1 = real size)."""

    num_classes: int
    fusion_dim: int = 128
    vocab_size: int = 64
    image_size: int = 32
    pretrained: bool = False
    width_scale: float = 1.0


Builder = Callable[[ModelSpec], TaskModel]
_REGISTRY: dict[str, tuple[Modality, Builder]] = {}


def register_task_model(name: str, modality: Modality) -> Callable[[Builder], Builder]:
    """Decorator registering `builder` under `name` for `modality`; a duplicate name is an error."""

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"task model {name!r} is already registered")
        _REGISTRY[name] = (modality, builder)
        return builder

    return decorator


def available_models(modality: Modality | None = None) -> list[str]:
    """Registered model names, optionally of one modality."""
    return sorted(n for n, (m, _) in _REGISTRY.items() if modality is None or m == modality)


def model_modality(name: str) -> Modality:
    """The modality a registered model consumes."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown task model {name!r}; registered: {', '.join(available_models())}")
    return _REGISTRY[name][0]


def build_task_model(name: str, spec: ModelSpec, seed: int | None = None) -> TaskModel:
    """Build a registered model; with `seed`, its initial weights are reproducible (FedAvg needs
    every client of an architecture to start from the same weights)."""
    modality = model_modality(name)
    if seed is not None:
        torch.manual_seed(seed)
    model = _REGISTRY[name][1](spec)
    if model.modality != modality:
        raise TypeError(f"builder {name!r} registered for {modality} returned a {model.modality} model")
    return model


def _wrap(backbone: torch.nn.Module, spec: ModelSpec, modality: Modality) -> TaskModel:
    return TaskModel(backbone, backbone.out_dim, spec.num_classes, spec.fusion_dim, modality)


@register_task_model("cnn", modality="image")
def _cnn(spec: ModelSpec) -> TaskModel:
    return _wrap(models.SmallCNN(width=32), spec, "image")


@register_task_model("cnn-small", modality="image")
def _cnn_small(spec: ModelSpec) -> TaskModel:
    return _wrap(models.SmallCNN(width=16), spec, "image")


@register_task_model("resnet", modality="image")
def _resnet(spec: ModelSpec) -> TaskModel:
    return _wrap(models.HFResNet(), spec, "image")


@register_task_model("vit", modality="image")
def _vit(spec: ModelSpec) -> TaskModel:
    return _wrap(models.HFViT(image_size=spec.image_size), spec, "image")


@register_task_model("gru", modality="text")
def _gru(spec: ModelSpec) -> TaskModel:
    return _wrap(models.GRUEncoder(spec.vocab_size), spec, "text")


@register_task_model("bow", modality="text")
def _bow(spec: ModelSpec) -> TaskModel:
    return _wrap(models.BagOfWords(spec.vocab_size), spec, "text")


@register_task_model("transformer", modality="text")
def _transformer(spec: ModelSpec) -> TaskModel:
    return _wrap(models.TinyBert(spec.vocab_size), spec, "text")


@register_task_model("mlp", modality="sensor")
def _mlp(spec: ModelSpec) -> TaskModel:
    return _wrap(models.SensorMLP(2 * SENSOR_DIM, hidden=64), spec, "sensor")


@register_task_model("mlp-small", modality="sensor")
def _mlp_small(spec: ModelSpec) -> TaskModel:
    return _wrap(models.SensorMLP(2 * SENSOR_DIM, hidden=32, layers=1), spec, "sensor")


@register_task_model("resnet18", modality="image")
def _resnet18(spec: ModelSpec) -> TaskModel:
    return _wrap(models.ResNet18(spec.pretrained, spec.width_scale), spec, "image")


@register_task_model("vit-s", modality="image")
def _vit_s(spec: ModelSpec) -> TaskModel:
    return _wrap(models.ViTSmall(spec.image_size, spec.pretrained, spec.width_scale), spec, "image")


@register_task_model("bert", modality="text")
def _bert(spec: ModelSpec) -> TaskModel:
    return _wrap(models.BertBase(spec.vocab_size, spec.pretrained, spec.width_scale), spec, "text")
