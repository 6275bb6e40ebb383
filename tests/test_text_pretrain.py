"""Pretraining of the shapes model's T5 encoder by caption parsing (editflow.train.text)."""

import pytest
import torch

from editflow.models.tiny import make_clip_tokenizer, make_t5_tokenizer, make_text_encoders
from editflow.train.data import caption_corpus
from editflow.train.text import ATTRIBUTES, IGNORE, pretrain_t5, token_labels


@pytest.fixture(scope="module")
def t5_tok():
    return make_t5_tokenizer(caption_corpus(2000, 0), vocab_size=160, model_max_length=36)


def test_token_labels_follow_the_object_phrases(t5_tok):
    text = "a picture of a large red circle at the top left, and a small blue square in the center, on a gray background"
    ids, labels = token_labels(t5_tok, [text], 36)
    words = t5_tok.convert_ids_to_tokens(ids[0].tolist())
    name = lambda attr, i: ATTRIBUTES[attr][labels[attr][0, i]] if labels[attr][0, i] != IGNORE else None  # noqa: E731
    first, second = words.index("▁red"), words.index("▁blue")
    # every token of a phrase, first article to last position word, carries that object's attributes
    for i in range(first - 2, first + 6):
        assert (name("color", i), name("shape", i), name("size", i), name("position", i)) == ("red", "circle", "large", "top left")
    for i in range(second - 2, second + 5):
        assert (name("color", i), name("position", i)) == ("blue", "center")
    # connecting words, the background phrase, the end token and padding belong to no object
    for i, w in enumerate(words):
        if w in ("▁picture", "▁of", "▁and", "▁on", "▁gray", "▁background", "</s>", "<pad>", ","):
            assert name("color", i) is None, w
    # every real token knows the background; padding and the end token none
    real = [i for i, w in enumerate(words) if w not in ("</s>", "<pad>")]
    assert all(name("background", i) == "gray" for i in real)
    assert name("background", words.index("</s>")) is None


def test_pretraining_makes_attributes_readable_from_every_token(t5_tok, tmp_path):
    """A few hundred steps lift held-out token accuracy far above a frozen random encoder's."""
    torch.manual_seed(0)
    _, t5 = make_text_encoders(make_clip_tokenizer(), t5_tok, dim=32, t5_layers=2, t5_buckets=32)
    acc = pretrain_t5(t5, t5_tok, seed=0, steps=300, batch_size=32, lr=3e-3, max_length=36, min_objects=1,
                      max_objects=3, stage_dir=tmp_path / "t5", progress=False)
    assert set(acc) == set(ATTRIBUTES)
    # chance: colour 1/9, shape 1/6, position 1/9, background 1/4 (measured: 0.79, 0.93, 0.43, 0.99)
    assert acc["color"] > 0.6 and acc["shape"] > 0.6 and acc["position"] > 0.3 and acc["background"] > 0.9, acc
    assert not t5.training
