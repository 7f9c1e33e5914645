"""The one pad rule and the one right-padded batch (layerif.tokens)."""
import pytest
import torch

from layerif.testing import char_tokenizer
from layerif.tokens import collate, pad_token_id, with_pad_token


def _tokenizers():
    """A real fast tokenizer with a pad token (id 0), one with only an eos token (id 2), and
    one with neither."""
    with_pad = char_tokenizer()
    only_eos = char_tokenizer()
    only_eos.pad_token = None
    neither = char_tokenizer()
    neither.pad_token = None
    neither.eos_token = None
    return with_pad, only_eos, neither


def test_pad_rule_pad_then_eos_then_zero():
    with_pad, only_eos, neither = _tokenizers()
    assert (with_pad.pad_token_id, with_pad.eos_token_id) == (0, 2)
    assert (only_eos.pad_token_id, only_eos.eos_token_id) == (None, 2)
    assert (neither.pad_token_id, neither.eos_token_id) == (None, None)
    assert pad_token_id(with_pad) == 0
    assert pad_token_id(only_eos) == 2
    assert pad_token_id(neither) == 0
    assert all(type(pad_token_id(t)) is int for t in (with_pad, only_eos, neither))


def test_with_pad_token_gives_the_eos_token_and_agrees_with_the_rule():
    with_pad, only_eos, neither = _tokenizers()
    for tok in (with_pad, only_eos, neither):
        before = pad_token_id(tok)
        assert with_pad_token(tok) is tok
        assert pad_token_id(tok) == before  # the rule gives the same id before and after
    assert only_eos.pad_token == "</s>" and only_eos.pad_token_id == 2
    assert with_pad.pad_token == "<pad>"  # a pad token is kept
    assert neither.pad_token is None  # nothing to give
    # the tokenizer's own padding now pads with the rule's id
    batch = only_eos(["ab", "abcd"], padding=True)["input_ids"]
    assert batch[0][-2:] == [2, 2]


def test_collate_right_pads_against_a_hand_built_batch():
    rows = [[5, 6, 7], [8], [9, 10]]
    ids, mask = collate(rows, 3)
    assert ids.tolist() == [[5, 6, 7], [8, 3, 3], [9, 10, 3]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert ids.dtype == mask.dtype == torch.long
    wide, wide_mask = collate(rows, 0, width=5)
    assert wide.tolist()[1] == [8, 0, 0, 0, 0] and wide_mask.sum().item() == 6
    with pytest.raises(ValueError, match=r"^width=2 is invalid: expected at least the longest row \(3\)$"):
        collate(rows, 0, width=2)


@pytest.mark.slow
def test_the_embedded_models_pad_ids_are_their_pad_tokens(smollm2):
    # load_model gives every tokenizer a pad token, so the rule returns it: the id each call
    # site used before the rule was shared (SmolLM2's pad token is its <|im_end|>, id 2).
    _, tokenizer = smollm2
    assert tokenizer.pad_token_id is not None
    assert pad_token_id(tokenizer) == tokenizer.pad_token_id == 2
