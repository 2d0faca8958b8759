"""Client task models: one interface for every modality and architecture.

A `TaskModel` wraps a backbone that maps a batch to an embedding [N, d_k] and adds two heads:
a classifier (logits [N, C]) and a projection into the shared fusion space (d, L2-normalised).
The projection lives with the client, so heterogeneous widths d_k are aligned at the source and
the server only ever sees d-dimensional vectors (ALGORITHM.md, "Roles and data").

Backbones are built from config with random initialisation: no pretrained download.
`transformers` is imported by the backbones built on its models only (resnet, vit, transformer
and the paper-profile ones), so a node running cnn, gru, bow or mlp never loads it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worlds.modality import TEXT_MAX_LENGTH, Modality
from worlds.tokenizer import PAD_ID


def _transformers(*names: str) -> tuple:
    """Classes of `transformers`, imported here so that only nodes running a backbone built on its
    models load it (a client-only install may lack it: requirements-client.txt)."""
    try:
        import transformers
    except ModuleNotFoundError as err:
        if err.name != "transformers":
            raise
        raise ModuleNotFoundError(
            "this task model is built on transformers' models; install them on this node: "
            "pip install 'transformers>=5.0'",
            name="transformers",
        ) from err
    return tuple(getattr(transformers, name) for name in names)


class TaskModel(nn.Module):
    """A backbone plus classifier and projection heads.

    Parameters
    ----------
    backbone : nn.Module
        Maps a model-input tensor of its modality to an embedding [N, embed_dim].
    embed_dim : int
        Width d_k of the backbone's embedding.
    num_classes : int
        Size C of the shared label space.
    fusion_dim : int
        Width d of the shared fusion space the projection head maps into.
    modality : str
        "image", "text" or "sensor": which raw inputs this model consumes.
    """

    def __init__(self, backbone: nn.Module, embed_dim: int, num_classes: int, fusion_dim: int, modality: Modality):
        super().__init__()
        self.modality = modality
        self.embed_dim = embed_dim
        self.backbone = backbone
        self.classifier = nn.Linear(embed_dim, num_classes)
        self.projection = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, fusion_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits [N, C], embedding [N, d_k])."""
        embedding = self.backbone(x)
        return self.classifier(embedding), embedding

    def project(self, embedding: torch.Tensor) -> torch.Tensor:
        """Map embeddings into the fusion space, L2-normalised: [N, d]."""
        return F.normalize(self.projection(embedding), dim=-1)


class SmallCNN(nn.Module):
    """Three conv blocks and global average pooling; the strong, cheap image client."""

    def __init__(self, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        channels = [3, width, 2 * width, 4 * width]
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class HFResNet(nn.Module):
    """transformers' ResNet (basic blocks) from config: a ResNet-18-style image client."""

    def __init__(self, depths: tuple[int, ...] = (2, 2, 2, 2), widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        ResNetConfig, ResNetModel = _transformers("ResNetConfig", "ResNetModel")

        config = ResNetConfig(
            num_channels=3, embedding_size=widths[0], hidden_sizes=list(widths), depths=list(depths), layer_type="basic"
        )
        self.net = ResNetModel(config)
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=x).pooler_output.flatten(1)


class HFViT(nn.Module):
    """transformers' ViT from config, [CLS] embedding: a realistic weak client from scratch."""

    def __init__(self, image_size: int = 32, patch_size: int = 4, hidden: int = 96, layers: int = 4):
        super().__init__()
        ViTConfig, ViTModel = _transformers("ViTConfig", "ViTModel")

        config = ViTConfig(
            image_size=image_size,
            patch_size=patch_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=2 * hidden,
        )
        self.net = ViTModel(config, add_pooling_layer=False)
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=x).last_hidden_state[:, 0]


class SensorMLP(nn.Module):
    """An MLP over sensor readings and their missing mask ([N, 2D], `modality.sensors_to_tensor`):
    the small model an IoT gateway can run."""

    def __init__(self, in_dim: int, hidden: int = 64, layers: int = 2):
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU()]
            width = hidden
        self.net = nn.Sequential(*blocks)
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _masked_mean(hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    mask = (ids != PAD_ID).unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class GRUEncoder(nn.Module):
    """Word embeddings and a bidirectional GRU, mean-pooled over real tokens."""

    def __init__(self, vocab_size: int, embed: int = 64, hidden: int = 64):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed, padding_idx=PAD_ID)
        self.gru = nn.GRU(embed, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.gru(self.embedding(ids))
        return _masked_mean(hidden, ids)


class BagOfWords(nn.Module):
    """Mean of word embeddings: the smallest text client (word order ignored)."""

    def __init__(self, vocab_size: int, embed: int = 64):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed, padding_idx=PAD_ID)
        self.out_dim = embed

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return _masked_mean(self.embedding(ids), ids)


class TinyBert(nn.Module):
    """transformers' BERT from config (2 layers, d=64), mean-pooled: the transformer text client."""

    def __init__(self, vocab_size: int, hidden: int = 64, layers: int = 2):
        super().__init__()
        BertConfig, BertModel = _transformers("BertConfig", "BertModel")

        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=2 * hidden,
            max_position_embeddings=TEXT_MAX_LENGTH,
            pad_token_id=PAD_ID,
        )
        self.net = BertModel(config, add_pooling_layer=False)
        self.out_dim = hidden

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.net(input_ids=ids, attention_mask=(ids != PAD_ID).long()).last_hidden_state
        return _masked_mean(hidden, ids)


def _from_pretrained_or_explain(model_class, hub_id: str):
    """Load pretrained backbone weights by hub id; explain the `client-pretrained` switch when offline."""
    try:
        return model_class.from_pretrained(hub_id)
    except (OSError, ValueError) as err:
        raise OSError(
            f"client-pretrained = true: cannot load {hub_id!r} (not cached, and the Hugging Face hub is unreachable "
            f"or offline). Run once with internet access, or set client-pretrained = false for random init."
        ) from err


def _scaled(value: int, scale: float, minimum: int = 1, multiple: int = 1) -> int:
    return max(minimum, int(round(value * scale / multiple)) * multiple)


class ResNet18(nn.Module):
    """ResNet-18 (transformers `ResNetModel`, basic blocks [2, 2, 2, 2], widths 64-512), pooled.

    Random init from config by default; ``pretrained`` loads ``microsoft/resnet-18``.
    ``scale`` < 1 shrinks the widths (tiny tests and GPU smoke checks), never the depth.
    """

    HUB_ID = "microsoft/resnet-18"

    def __init__(self, pretrained: bool = False, scale: float = 1.0):
        super().__init__()
        ResNetConfig, ResNetModel = _transformers("ResNetConfig", "ResNetModel")

        if pretrained:
            self.net = _from_pretrained_or_explain(ResNetModel, self.HUB_ID)
        else:
            widths = [_scaled(w, scale, 8, 8) for w in (64, 128, 256, 512)]
            config = ResNetConfig(
                num_channels=3, embedding_size=widths[0], hidden_sizes=widths, depths=[2, 2, 2, 2], layer_type="basic"
            )
            self.net = ResNetModel(config)
        self.out_dim = self.net.config.hidden_sizes[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=x).pooler_output.flatten(1)


class ViTSmall(nn.Module):
    """ViT-S/16 (transformers `ViTModel`: d 384, 12 layers, 6 heads), [CLS] embedding.

    ``pretrained`` loads ``WinKawaks/vit-small-patch16-224`` and interpolates its position
    embeddings to the world's image size; ``scale`` < 1 shrinks width and depth.
    """

    HUB_ID = "WinKawaks/vit-small-patch16-224"

    def __init__(self, image_size: int, pretrained: bool = False, scale: float = 1.0):
        super().__init__()
        ViTConfig, ViTModel = _transformers("ViTConfig", "ViTModel")

        if pretrained:
            self.net = _from_pretrained_or_explain(ViTModel, self.HUB_ID)
        else:
            heads = _scaled(6, scale)
            hidden = _scaled(384, scale, heads * 8, heads)
            config = ViTConfig(
                image_size=image_size,
                patch_size=16 if image_size >= 64 else 4,
                hidden_size=hidden,
                num_hidden_layers=_scaled(12, scale),
                num_attention_heads=heads,
                intermediate_size=4 * hidden,
            )
            self.net = ViTModel(config, add_pooling_layer=False)
        self.out_dim = self.net.config.hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[:, 0]


class BertBase(nn.Module):
    """A BERT-base text client (d 768, 12 layers, 12 heads), mean-pooled over real tokens.

    ``pretrained`` loads ``google-bert/bert-base-uncased`` (use its tokenizer as ``text-tokenizer``);
    ``scale`` < 1 shrinks width and depth.
    """

    HUB_ID = "google-bert/bert-base-uncased"

    def __init__(self, vocab_size: int, pretrained: bool = False, scale: float = 1.0):
        super().__init__()
        BertConfig, BertModel = _transformers("BertConfig", "BertModel")

        if pretrained:
            self.net = _from_pretrained_or_explain(BertModel, self.HUB_ID)
        else:
            heads = _scaled(12, scale)
            hidden = _scaled(768, scale, heads * 8, heads)
            config = BertConfig(
                vocab_size=vocab_size,
                hidden_size=hidden,
                num_hidden_layers=_scaled(12, scale),
                num_attention_heads=heads,
                intermediate_size=4 * hidden,
                max_position_embeddings=max(TEXT_MAX_LENGTH, 512),
                pad_token_id=PAD_ID,
            )
            self.net = BertModel(config, add_pooling_layer=False)
        self.out_dim = self.net.config.hidden_size

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.net(input_ids=ids, attention_mask=(ids != PAD_ID).long()).last_hidden_state
        return _masked_mean(hidden, ids)
