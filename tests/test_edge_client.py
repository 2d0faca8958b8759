"""A client SuperNode that fits an edge device (issue #15, part 6): the toy ClientApp imports none
of the server's, the simulation's or the paper world's libraries, and the light code paths that
replace them give the same numbers.

The import checks run in fresh interpreters (this one has loaded everything already). The
equivalence checks compare the toy tokenizer without `transformers`, and the Dirichlet partition
and train/test split without `flwr_datasets` / `datasets`, against those libraries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from worlds import splits, tokenizer
from worlds.client_data import dirichlet_partition, train_test_split
from worlds.modality import TEXT_MAX_LENGTH, to_model_input

ROOT = Path(__file__).resolve().parents[1]
#: Never on an edge node: the server's models, the simulation engine, the paper world's data,
#: plotting and logging.
NEVER = {
    "datasets",
    "flwr_datasets",
    "pyarrow",
    "pandas",
    "diffusers",
    "peft",
    "ray",
    "matplotlib",
    "tensorboard",
}
#: Loaded only by the architectures built on transformers' models (resnet, vit, transformer).
TRANSFORMERS = {"transformers", "huggingface_hub", "safetensors", "scipy", "PIL"}
WATCHED = NEVER | TRANSFORMERS | {"tokenizers"}
TINY = {"pool-size": 480, "test-per-class": 2, "client-warmup-epochs": 1, "local-epochs": 1, "client-device": "cpu"}

#: Imports the ClientApp, then builds each node of `layout` from a Context as a SuperNode does (its
#: data, model and warm-up) and answers one query.infer through the ClientApp; prints, per node,
#: the heavy top-level packages loaded so far.
SNIPPET = textwrap.dedent(
    """
    import json, sys
    import client_app.app
    watched = set(json.loads(sys.argv[2]))
    def loaded():
        return sorted({m.split(".")[0] for m in sys.modules} & watched)
    report = {"after-import": loaded()}
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity
    from client_app.node import ClientNode
    from fedmmkt_strategy import protocol as P
    from worlds import domain, sensor
    for name in ("_run_id", "_node_id", "_task_id"):
        if getattr(TaskIdentity, name, None) is None:
            setattr(TaskIdentity, name, 1)
    run_config = json.loads(sys.argv[1])
    layout = run_config["client-layout"].split(",")
    s = domain.generate(np.arange(8) % domain.NUM_CLASSES, seed=9)
    pool = {
        P.IMAGES: Array(s.images), P.CAPTIONS: Array(np.array([c[0] for c in s.captions])),
        P.SENSORS: Array(sensor.readings(np.arange(8) % domain.NUM_CLASSES, seed=9)),
        P.ROWS: Array(np.arange(8)), P.POOL_SIZE: Array(np.array([8])),
    }
    for i, slot in enumerate(layout):
        context = Context(run_id=1, node_id=100 + i, node_config={"partition-id": i, "num-partitions": len(layout)},
                          state=RecordDict(), run_config=dict(run_config))
        node = ClientNode.from_context(context)
        assert node.role.architecture == slot.split(":")[1] and len(node.data.train) > 0
        config = ConfigRecord({P.SERVER_ROUND: 1, P.NUM_CLASSES: node.world.num_classes})
        msg = Message(RecordDict({P.SYNTHETIC: ArrayRecord(pool), P.CONFIG: config}),
                      dst_node_id=100 + i, message_type=P.QUERY_INFER)
        msg.metadata.__dict__["_message_id"] = str(i)
        reply = client_app.app.app(msg, context)
        assert not reply.has_error(), reply.error.reason
        assert reply.content[P.INFERENCE][P.PROBS].numpy().shape == (8, node.world.num_classes)
        report[slot] = loaded()
    print("EDGE " + json.dumps(report))
    """
)


def _client_modules(layout: str) -> dict[str, list[str]]:
    """Run SNIPPET for `layout` in a fresh interpreter; the heavy packages loaded at each step."""
    run_config = {**TINY, "client-layout": layout}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            SNIPPET,
            json.dumps(run_config),
            json.dumps(sorted(WATCHED)),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("EDGE "))
    return json.loads(line[len("EDGE ") :])


def test_the_toy_client_app_imports_no_heavy_library():
    report = _client_modules("image:cnn,image:cnn-small,text:gru,text:bow,sensor:mlp")
    assert report.pop("after-import") == []
    for slot, modules in report.items():
        # the toy tokenizer is `tokenizers` alone (text nodes); nothing else
        assert set(modules) <= {"tokenizers"}, f"after building {slot}: {modules}"
    assert "tokenizers" not in report["image:cnn-small"]  # image nodes never tokenize


def test_transformers_backbones_load_transformers_and_still_no_data_or_server_library():
    """resnet, vit and transformer are transformers' ResNetModel / ViTModel / BertModel: those nodes
    need transformers (requirements-client.txt says so), and nothing else heavy."""
    report = _client_modules("image:resnet,image:vit,text:transformer")
    assert report.pop("after-import") == []
    for slot, modules in report.items():
        assert "transformers" in modules and not set(modules) & NEVER, f"after building {slot}: {modules}"


def _texts() -> list[str]:
    spec = splits.DomainSpec(seed=0, pool_size=200, public_size=200, test_per_class=2)
    captions = [c for split in (splits.TEXT_POOL, splits.PUBLIC) for c in splits.split_columns(split, spec)["captions"]]
    return [str(t) for caps in captions for t in caps] + [
        "",
        "UNKNOWN Words, here!",
        " ".join(["red"] * 60),  # truncated: bos + 30 words + eos
        "[PAD] <|endoftext|> [UNK] <|startoftext|>red",  # special tokens are matched before splitting
        "  spaced   out  ",
        "ünïcode flower",
    ]


def test_the_toy_tokenizer_without_transformers_gives_the_same_ids():
    texts = _texts()
    reference = tokenizer.build_tokenizer(TEXT_MAX_LENGTH)
    expected = reference(texts, padding="max_length", truncation=True, max_length=TEXT_MAX_LENGTH, return_tensors="pt")
    assert torch.equal(to_model_input("text", texts), expected["input_ids"])
    assert torch.equal(to_model_input("text", texts, reference), expected["input_ids"])
    assert tokenizer.vocab_size() == len(reference) == len(tokenizer.build_tokenizer(24))
    # the backend is configured exactly as transformers configures it for that call
    assert json.loads(tokenizer._padded_backend(TEXT_MAX_LENGTH).to_str()) == json.loads(
        reference.backend_tokenizer.to_str()
    )


@pytest.mark.parametrize("num_partitions,alpha", [(1, 0.5), (2, 0.1), (4, 0.1), (4, 1.0), (7, 0.3), (3, 100.0)])
def test_the_dirichlet_partition_is_flwr_datasets_partitioner(num_partitions, alpha):
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    labels = np.random.default_rng(num_partitions).integers(0, 24, 600)
    for seed in (0, 5):
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions, partition_by="label", alpha=alpha, min_partition_size=10, seed=seed
        )
        partitioner.dataset = Dataset.from_dict({"label": labels, "row": np.arange(len(labels))})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # both warn alike when they resample
            ours = dirichlet_partition(labels, num_partitions, alpha, 10, seed)
        theirs = [partitioner.load_partition(p)["row"] for p in range(num_partitions)]
        assert [list(map(int, t)) for t in theirs] == ours


@pytest.mark.parametrize("num_rows,test_size", [(50, 0.2), (7, 0.5), (101, 0.15), (40, 9), (3, 1), (0, 0.2)])
def test_the_train_test_split_is_datasets_split(num_rows, test_size):
    from datasets import Dataset

    data = Dataset.from_dict({"row": np.arange(num_rows)})
    theirs = data.train_test_split(test_size=test_size, seed=11)
    train, test = train_test_split(num_rows, test_size, seed=11)
    assert list(theirs["train"]["row"]) == train.tolist() and list(theirs["test"]["row"]) == test.tolist()


def test_the_light_split_and_split_errors_match_datasets():
    from datasets import Dataset

    for size in (0.0, 1.0, 10):
        with pytest.raises(ValueError) as theirs:
            Dataset.from_dict({"row": np.arange(10)}).train_test_split(test_size=size, seed=0)
        with pytest.raises(ValueError) as ours:
            train_test_split(10, size, seed=0)
        assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("split", [splits.IMAGE_POOL, splits.PUBLIC, splits.TEXT_TEST, splits.SENSOR_POOL])
def test_split_columns_hold_the_rows_of_the_dataset(split):
    spec = splits.DomainSpec(seed=2, pool_size=120, public_size=90, test_per_class=2)
    columns = splits.split_columns(split, spec)
    data = splits.load_split(split, spec).with_format("numpy")[:]
    assert set(columns) == set(data)
    for key, values in columns.items():
        if key == "captions":
            assert [list(map(str, c)) for c in data[key]] == values
        else:
            assert np.array_equal(np.asarray(values), np.asarray(data[key]), equal_nan=True), key


def test_a_node_without_transformers_is_told_what_to_install(monkeypatch):
    from task_models.registry import ModelSpec, build_task_model

    monkeypatch.setitem(sys.modules, "transformers", None)  # as on a client-only install
    build_task_model("cnn", ModelSpec(24, 16, tokenizer.vocab_size()))
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'transformers>=5\.0'"):
        build_task_model("resnet", ModelSpec(24, 16, tokenizer.vocab_size()))
