"""Token data sets: native values, fixed splits, vocabulary checks."""

import pytest
import torch

from diffusionlens.data import DISCRETE_DATASETS, TEXT_VOCAB, Data, decode_text, load_dataset


def test_digits17_are_the_native_integer_values_of_digits():
    tr, te = load_dataset("digits17", "train"), load_dataset("digits17", "test")
    ref = load_dataset("digits", "test")
    assert tr.vocab == 17 and tr.x.dtype == torch.int64 and tr.x.shape[1:] == (8, 8)
    assert len(tr) == 1497 and len(te) == 300 and torch.equal(te.y, ref.y)
    assert torch.equal(te.x, (ref.x[:, 0] * 8 + 8).round().long())
    assert int(tr.x.min()) == 0 and int(tr.x.max()) == 16


def test_text_split_is_by_topic_and_decodes():
    tr, te = load_dataset("text", "train"), load_dataset("text", "test")
    assert tr.vocab == te.vocab == len(TEXT_VOCAB) == 96 and tr.x.shape[1:] == (64,)
    assert len(tr) > 10 * len(te) > 0
    from pydoc_data.topics import topics

    first = sorted(topics)[0]  # index 0 goes to test
    assert decode_text(te.x[:1])[0] == topics[first][:64]
    assert decode_text(tr.x[:1])[0] == topics[sorted(topics)[1]][:64]  # train starts at the second topic


def test_n_caps_and_the_set_is_listed():
    assert set(DISCRETE_DATASETS) == {"digits17", "mnist-binary", "text"}
    assert len(load_dataset("text", "test", n=7)) == 7


def test_bad_tokens_are_one_line():
    with pytest.raises(ValueError, match="outside the vocabulary 0..3"):
        Data(x=torch.tensor([[0, 4]]), y=None, num_classes=None, name="t", data_shape=(2,), is_image=False, vocab=4)
    with pytest.raises(TypeError, match="int64"):
        Data(x=torch.zeros(2, 2), y=None, num_classes=None, name="t", data_shape=(2,), is_image=False, vocab=4)
