"""The block-tail forward (layerif.blocks) against whole-model computations."""
import pytest
import torch

from layerif import blocks
from layerif.gradients import example_losses

TEXTS = ["the cat sat on the mat", "a dog barked twice", "birds sing at dawn here",
         "rain fell all night", "we ate soup", "she reads books daily"]


def restricted_losses(model, ids, mask, vocab):
    """Per-example loss with the softmax over ``vocab`` only, from the whole model's logits."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1][..., vocab]
    lut = {int(t): i for i, t in enumerate(vocab)}
    targets = torch.tensor([[lut.get(int(t), 0) for t in row] for row in ids[:, 1:]])
    nll = -logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    m = mask[:, 1:].to(nll.dtype)
    return (nll * m).sum(1) / m.sum(1)


def test_tail_losses_equal_whole_model_losses(tiny64):
    model, tok = tiny64
    ids, mask = blocks.token_batch(tok, TEXTS, 32)
    loss_mask = mask.clone()
    loss_mask[:, 0] = 0
    reference = example_losses(model, ids, mask, loss_mask)
    hidden = blocks.block_inputs(model, ids, mask, [0, 2, 3])
    for start in (0, 2, 3):
        torch.testing.assert_close(blocks.tail_losses(model, start, hidden[start], ids, mask),
                                   reference, rtol=1e-12, atol=1e-12)
    # restricted softmax: brute force from the whole model's logits
    vocab = torch.unique(ids[mask > 0])
    torch.testing.assert_close(blocks.tail_losses(model, 2, hidden[2], ids, mask, vocab),
                               restricted_losses(model, ids, mask, vocab), rtol=1e-10, atol=1e-12)
    assert len(list(model.model.layers)) == 4  # the tail was put back


def test_resolve_block_counts_from_the_end_and_names_a_bad_block():
    assert [blocks.resolve_block(b, 4) for b in (0, 3, -1, -4)] == [0, 3, 3, 0]
    for bad in (4, -5, 1.0):
        with pytest.raises(ValueError, match="block="):
            blocks.resolve_block(bad, 4)


def test_token_batch_pads_right_in_input_order(tiny64):
    _, tok = tiny64
    ids, mask = blocks.token_batch(tok, ["a dog barked twice", "we ate soup"], 32)
    lengths = [len(tok(t)["input_ids"]) for t in ("a dog barked twice", "we ate soup")]
    assert mask.sum(1).tolist() == lengths and ids.shape[1] == max(lengths)
    assert ids[1, :lengths[1]].tolist() == tok("we ate soup")["input_ids"]
