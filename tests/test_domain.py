import numpy as np
import pytest

from worlds import domain, splits
from worlds.tokenizer import UNK_ID, build_tokenizer


def test_at_least_twenty_classes_from_attribute_combinations():
    assert domain.NUM_CLASSES >= 20
    attrs = {(c.colour, c.count, c.shape) for c in domain.CLASSES}
    assert len(attrs) == domain.NUM_CLASSES
    assert len(set(domain.class_names())) == domain.NUM_CLASSES


def test_generation_is_deterministic_per_seed():
    labels = np.arange(48) % domain.NUM_CLASSES
    a, b = domain.generate(labels, seed=3), domain.generate(labels, seed=3)
    c = domain.generate(labels, seed=4)
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (48, 32, 32, 3) and a.images.dtype == np.uint8
    assert all(len(caps) == 3 for caps in a.captions)


def test_image_size_64():
    s = domain.generate(np.array([0, 1]), seed=0, image_size=64)
    assert s.images.shape == (2, 64, 64, 3)


def test_full_captions_name_exactly_their_class():
    rng = np.random.default_rng(0)
    nuisance = {"centre": "yellow", "background": "sand", "size": "small"}
    for label in range(domain.NUM_CLASSES):
        c = domain.CLASSES[label]
        for _ in range(10):
            found = domain.caption_attributes(domain.make_caption(rng, label, nuisance, partial_rate=0.0))
            assert found == {"colour": c.colour, "count": c.count, "shape": c.shape}


def test_partial_captions_are_ambiguous_but_never_wrong():
    labels = np.repeat(np.arange(domain.NUM_CLASSES), 20)
    s = domain.generate(labels, seed=1, partial_rate=0.4)
    complete = 0
    for label, caps in zip(labels, s.captions):
        c = domain.CLASSES[label]
        truth = {"colour": c.colour, "count": c.count, "shape": c.shape}
        for cap in caps:
            found = domain.caption_attributes(cap)
            assert all(truth[k] == v for k, v in found.items()), cap
            complete += found == truth
    share = complete / (len(labels) * 3)
    assert 0.5 < share < 0.7  # about 60 % name the whole class


def test_every_caption_word_is_in_the_tokenizer_vocabulary():
    s = domain.generate(np.arange(240) % domain.NUM_CLASSES, seed=2)
    tok = build_tokenizer()
    ids = tok([c for caps in s.captions for c in caps])["input_ids"]
    assert all(UNK_ID not in row for row in ids)
    prompts = tok([domain.class_prompt(i) for i in range(domain.NUM_CLASSES)])["input_ids"]
    assert all(UNK_ID not in row for row in prompts)


def test_splits_are_balanced_disjoint_and_public_is_imperfect():
    spec = splits.DomainSpec(pool_size=600, public_size=1200, test_per_class=5, reference_per_class=4)
    test = splits.load_split(splits.IMAGE_TEST, spec).with_format("numpy")[:]
    assert np.bincount(test["label"], minlength=domain.NUM_CLASSES).tolist() == [5] * domain.NUM_CLASSES
    public = splits.load_split(splits.PUBLIC, spec).with_format("numpy")[:]
    wrong = public["label"] != public["caption_label"]
    assert 0.05 < wrong.mean() < 0.3
    confused = set(splits.confused_classes(spec).tolist())
    assert set(public["label"][wrong].tolist()) <= confused
    for y, cy in zip(public["label"][wrong], public["caption_label"][wrong]):
        assert cy == domain.confusable_neighbour(int(y))
    pool = splits.load_split(splits.IMAGE_POOL, spec).with_format("numpy")[:]
    assert not np.array_equal(pool["image"][:5], test["image"][:5])


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="unknown split"):
        splits.load_split("nope", splits.DomainSpec())
