"""A node's role from its node config: the layout slot by default, the node's own keys when given."""

import pytest

from task_models.layout import NodeRole, assign_node, parse_layout
from task_models.node_config import (
    NodeConfigError,
    deployment_node_configs,
    format_node_config,
    resolve_role,
)

LAYOUT = parse_layout("image:cnn,text:bow,image:cnn-small")


def test_without_overrides_the_layout_decides():
    assert resolve_role({"partition-id": 2, "num-partitions": 3}, LAYOUT) == assign_node(2, 3, LAYOUT)


def test_architecture_overrides_within_the_same_modality_keeps_the_data_partition():
    role = resolve_role({"partition-id": 2, "num-partitions": 3, "architecture": "vit"}, LAYOUT)
    assert role == NodeRole("image", "vit", 1, 2)


def test_a_node_that_changes_modality_must_say_which_data_it_holds():
    with pytest.raises(NodeConfigError, match="give data-partition and num-data-partitions"):
        resolve_role({"partition-id": 0, "num-partitions": 3, "architecture": "gru"}, LAYOUT)
    role = resolve_role(
        {"partition-id": 0, "num-partitions": 3, "architecture": "gru", "data-partition": 0, "num-data-partitions": 2},
        LAYOUT,
    )
    assert role == NodeRole("text", "gru", 0, 2)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"partition-id": 3, "num-partitions": 3}, "partition-id 3 is outside"),
        ({"num-partitions": 3}, "partition-id: Field required"),
        ({"partition-id": 0, "num-partitions": 3, "modality": "audio"}, "modality 'audio' must be one of"),
        ({"partition-id": 0, "num-partitions": 3, "architecture": "nope"}, "architecture 'nope' is not registered"),
        ({"partition-id": 0, "num-partitions": 3, "modality": "text", "architecture": "cnn"}, "is a image model"),
        ({"partition-id": 0, "num-partitions": 3, "modality": "text"}, "no architecture"),
        ({"partition-id": 0, "num-partitions": 3, "data-partition": 0}, "must be given together"),
        ({"partition-id": True, "num-partitions": 3}, "partition-id: Input should be a valid integer"),
        ({"partition-id": 0, "num-partitions": 3, "modality": 3}, "modality: Input should be a valid string"),
    ],
)
def test_bad_node_configs_name_the_key(config, message):
    with pytest.raises(NodeConfigError, match=message):
        resolve_role(config, LAYOUT)


def test_deployment_node_configs_reproduce_the_layout_explicitly():
    configs = deployment_node_configs(LAYOUT, 5)
    other_layout = parse_layout("text:gru")  # the run's layout no longer matters
    assert [resolve_role(c, other_layout) for c in configs] == [assign_node(i, 5, LAYOUT) for i in range(5)]
    assert format_node_config(configs[1]) == (
        'partition-id=1 num-partitions=5 modality="text" architecture="bow" data-partition=0 num-data-partitions=2'
    )
