from __future__ import annotations

from transformers import BlipForConditionalGeneration, BlipProcessor

from fedmmkt_strategy.generative.captioner import (
    build_tiny_captioner,
    caption_images,
    load_captioner,
    save_captioner,
    train_captioner,
)
from worlds.domain import vocabulary


def test_captions_are_vocabulary_sentences_one_per_image(trained_captioner, public):
    model, processor = trained_captioner
    images = public[0][:20]
    captions = caption_images(model, processor, images, batch_size=8)
    assert isinstance(captions, list) and len(captions) == 20
    assert all(isinstance(c, str) for c in captions)
    words = {w for c in captions for w in c.split()}
    assert words and words <= set(vocabulary())


def test_save_and_load_round_trip_through_the_hub_loader(trained_captioner, public, tmp_path):
    model, processor = trained_captioner
    save_captioner(model, processor, tmp_path)
    loaded_model, loaded_processor = load_captioner(str(tmp_path))
    assert isinstance(loaded_model, BlipForConditionalGeneration)
    assert isinstance(loaded_processor, BlipProcessor)
    images = public[0][:16]
    assert caption_images(loaded_model, loaded_processor, images) == caption_images(model, processor, images)


def test_training_lowers_the_captioning_loss(tokenizer, public):
    model, processor = build_tiny_captioner(tokenizer, seed=1)
    images, _, captions = public

    def probe() -> float:  # lr 0 leaves the weights alone
        return train_captioner(model, processor, images, captions, steps=1, lr=0.0, batch_size=64, seed=5)

    before = probe()
    train_captioner(model, processor, images, captions, steps=25, lr=2e-3, batch_size=32, seed=0)
    assert probe() < 0.7 * before
    assert not model.training
