from __future__ import annotations

import huggingface_hub.constants
import pytest

from fedmmkt_strategy.generative.captioner import load_captioner
from fedmmkt_strategy.generative.loading import ModelUnavailableError
from fedmmkt_strategy.generative.t2i import load_pipeline


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize(
    ("loader", "model_id"),
    [
        (load_pipeline, "stable-diffusion-v1-5/stable-diffusion-v1-5"),
        (load_captioner, "Salesforce/blip-image-captioning-base"),
    ],
)
def test_missing_hub_id_fails_with_a_clear_message(offline, loader, model_id):
    with pytest.raises(ModelUnavailableError) as info:
        loader(model_id)
    message = str(info.value)
    assert repr(model_id) in message
    assert "local folder" in message and "fedmmkt pretrain" in message and "internet" in message
    assert isinstance(info.value, OSError)


def test_a_broken_local_folder_keeps_the_library_error(offline, tmp_path):
    with pytest.raises(Exception) as info:
        load_pipeline(str(tmp_path))
    assert not isinstance(info.value, ModelUnavailableError)
