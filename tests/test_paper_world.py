"""The paper world's data path, offline: a flowers-schema parquet file written at test time."""

from __future__ import annotations

import numpy as np
import pytest

from fedmmkt_strategy.config import ConfigError, RunConfig
from lab.paper_standins import FLOWER_NAMES, save_word_tokenizer, write_flowers_parquet
from worlds import hf_datasets, splits
from worlds.client_data import load_client_data
from worlds.world import build_world


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    return write_flowers_parquet(tmp_path_factory.mktemp("data") / "flowers.parquet", 4, per_class=12, size=40)


@pytest.fixture(scope="module")
def spec(parquet):
    return hf_datasets.PaperDataSpec(source=str(parquet), image_size=24, seed=3)


def test_mapping_gives_the_toy_schema_and_class_names(spec):
    world = build_world(spec)
    assert world.class_names == FLOWER_NAMES[:4]
    pool = world.load_split(splits.IMAGE_POOL)
    assert pool.features["image"].dtype == "uint8"
    row = pool.with_format("numpy")[0]
    assert row["image"].shape == (24, 24, 3)
    assert list(row["captions"])[0].startswith("a photo of a ") and row["caption_label"] == row["label"]
    assert world.class_prompt(2) == "a photo of a tiger lily"


def test_splits_are_disjoint_and_cover_every_row():
    rows = hf_datasets.assign_rows(100, seed=0)
    joined = np.concatenate(list(rows.values()))
    assert len(joined) == 100 and len(np.unique(joined)) == 100
    assert len(rows[splits.PUBLIC]) == 20 and len(rows[splits.REFERENCE]) == 10
    with pytest.raises(ValueError, match="too few"):
        hf_datasets.assign_rows(5, seed=0)


def test_max_samples_takes_a_seeded_subset(parquet):
    world = hf_datasets.load_paper_world(hf_datasets.PaperDataSpec(source=str(parquet), image_size=16, max_samples=24))
    assert len(world.data) == 24


def test_clients_get_a_dirichlet_share_of_the_paper_pool(spec):
    data = load_client_data(spec, "text", partition=0, num_partitions=2, alpha=0.5)
    assert len(data.train) > 0 and all(isinstance(t, str) for t in data.train.inputs)
    assert set(np.unique(data.global_test.labels)) <= set(range(4))


def test_a_missing_column_names_its_key(parquet):
    with pytest.raises(KeyError, match="hf-text-column = 'caption'"):
        hf_datasets.load_paper_world(hf_datasets.PaperDataSpec(source=str(parquet), text_column="caption"))


@pytest.fixture
def offline(monkeypatch):
    """The hub unreachable at once (no network retries): the libraries' own offline switches."""
    import datasets
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def test_an_unreachable_hub_id_names_the_key_and_says_offline(offline):
    with pytest.raises(hf_datasets.DatasetUnavailableError, match="hf-dataset = 'no-such/flowers'.*unreachable"):
        hf_datasets.load_source(hf_datasets.PaperDataSpec(source="no-such/flowers"))


def test_text_tokenizer_from_a_folder_and_a_clear_error_offline(tmp_path, spec, offline):
    save_word_tokenizer(tmp_path / "tok", ["a photo of a sweet pea"], 16)
    world = build_world(spec, tokenizer_id=str(tmp_path / "tok"))
    assert world.tokenizer()("sweet pea").input_ids[1] != 1  # known word, not [UNK]
    with pytest.raises(OSError, match="text-tokenizer = 'no-such/tokenizer'"):
        build_world(spec, tokenizer_id="no-such/tokenizer").tokenizer()


def test_run_config_validates_the_paper_keys(parquet):
    with pytest.raises(ConfigError, match="hf-dataset is empty"):
        RunConfig.from_run_config({"dataset": "hf", "t2i-model": "x", "captioner-model": "y"})
    with pytest.raises(ConfigError, match="t2i-model = 'local:tiny-flowers'"):
        RunConfig.from_run_config({"dataset": "hf", "hf-dataset": str(parquet)})
    with pytest.raises(ConfigError, match="32 or 64"):
        RunConfig.from_run_config({"image-size": 128})
    with pytest.raises(ConfigError, match="hf-prompt-template"):
        RunConfig.from_run_config({"hf-prompt-template": "no slot"})
    config = RunConfig.from_run_config(
        {"dataset": "hf", "hf-dataset": str(parquet), "t2i-model": "x", "captioner-model": "y", "image-size": 128}
    )
    assert config.world_spec.image_size == 128 and config.world().num_classes == 4
