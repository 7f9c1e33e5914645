"""Per-example gradients from batched hooked passes vs one autograd backward per example."""
import os

import pytest
import torch

from layerif import _hooks
from layerif.gradients import GradientEngine, attached_lora, encode, find_units, select_modules
from layerif.models import transformer_blocks

# Brute-force comparisons run here; LAYERIF_TEST_DEVICE=cuda repeats them on a GPU.
DEVICE = torch.device(os.environ.get("LAYERIF_TEST_DEVICE", "cpu"))

# Lengths straddle the Gram/direct switch of the tiny model (T < 16 uses token Grams).
TEXTS = ["Hi.", "The cat sat on the mat.", "a b", "Influence functions, per block!",
         "ok", "Short one", "A rather longer sentence to pad the others out; 48 chars.",
         "xyz"]


pytestmark = pytest.mark.usefixtures("one_thread")


def brute_force(model, tokenizer, texts, params, max_length=128, include_pads=False):
    """Each example alone: its own forward and ``autograd.grad``; CPU rows [n, numel] per param.

    The loss is written independently of layerif: the mean over target tokens of
    -log softmax, targets = every position after the first (pads too when included, the
    example then being right-padded to max_length).
    """
    rows = [[] for _ in params]
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        n_real = len(ids)
        attention = [1] * n_real
        if include_pads:
            ids = ids + [tokenizer.pad_token_id] * (max_length - n_real)
            attention = attention + [0] * (max_length - n_real)
        device = next(model.parameters()).device
        logits = model(input_ids=torch.tensor([ids], device=device),
                       attention_mask=torch.tensor([attention], device=device)).logits[0]
        logp = torch.log_softmax(logits.double(), dim=-1)
        n_targets = len(ids) - 1 if include_pads else n_real - 1
        nll = [-logp[t - 1, ids[t]] for t in range(1, n_targets + 1)]
        loss = torch.stack(nll).mean()
        for r, g in zip(rows, torch.autograd.grad(loss, params)):
            r.append(g.detach().flatten().cpu())
    return [torch.stack(r) for r in rows]


def rel_err(a, b):
    a, b = a.cpu(), b.cpu()
    return float((a - b).abs().max() / b.abs().max())


def on_device(pair):
    """``(model, tokenizer)`` with the model moved to DEVICE."""
    return pair[0].to(DEVICE), pair[1]


def lora_tiny(tiny64, seed=1):
    """The float64 tiny Llama on DEVICE with peft LoRA on q/k/v/o and random (non-zero) B."""
    from peft import LoraConfig, inject_adapter_in_model

    model, tok = on_device(tiny64)
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "k_proj",
                                       "v_proj", "o_proj"], lora_dropout=0.0), model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)  # any device
    return model, tok


@pytest.mark.parametrize("target", ["weights", "lora"])
@pytest.mark.parametrize("include_pads", [False, True])
def test_per_example_matches_brute_force(tiny64, target, include_pads):
    model, tok = lora_tiny(tiny64) if target == "lora" else on_device(tiny64)
    units = find_units(model, target)
    assert len(units) == 4 * (4 if target == "weights" else 8)
    max_length = 60 if include_pads else 128
    engine = GradientEngine(model, units, progress=False)
    batches = encode(tok, TEXTS, max_length=max_length, include_pads=include_pads, batch_size=3)
    got = engine.per_example(batches)
    ref = brute_force(model, tok, TEXTS, [u.param for u in units], max_length, include_pads)
    for u, g, r in zip(units, got, ref):
        assert g.shape == (len(TEXTS), u.numel)
        assert rel_err(g, r) < 1e-10, u.name
    # and the summed (validation) pass
    for s, r in zip(engine.summed(batches), ref):
        assert rel_err(s, r.sum(0)) < 1e-10


def test_streaming_statistics_match_brute_force(tiny64):
    model, tok = on_device(tiny64)
    units = find_units(model, "weights", "all")  # includes MLP shapes (32x64, 64x32)
    engine = GradientEngine(model, units, progress=False)
    batches = encode(tok, TEXTS, batch_size=4)
    ref = brute_force(model, tok, TEXTS, [u.param for u in units])
    gen = torch.Generator().manual_seed(0)
    vecs = [torch.randn(u.numel, generator=gen, dtype=torch.float64).to(DEVICE) for u in units]
    coef = torch.randn(len(units), len(TEXTS), generator=gen, dtype=torch.float64).to(DEVICE)
    sq, dots = engine.norms_and_dots(batches, vecs)
    assert rel_err(sq, torch.stack([(r * r).sum(1) for r in ref])) < 1e-10
    assert rel_err(dots, torch.stack([r @ v.cpu() for r, v in zip(ref, vecs)])) < 1e-10
    for k, w in enumerate(engine.weighted_sum(batches, coef)):
        assert rel_err(w, coef[k].cpu() @ ref[k]) < 1e-10


def test_batching_and_padding_do_not_change_gradients(tiny64):
    model, tok = on_device(tiny64)
    units = find_units(model)
    engine = GradientEngine(model, units, progress=False)
    alone = engine.per_example(encode(tok, TEXTS, batch_size=1))
    batched = engine.per_example(encode(tok, TEXTS, batch_size=8))
    for a, b in zip(alone, batched):
        assert rel_err(b, a) < 1e-10


def test_gpt2_conv1d_weights(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from layerif.testing import char_tokenizer

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=24, n_head=4, vocab_size=104,
                                       n_positions=128)).double().eval().to(DEVICE)
    tok = char_tokenizer()
    units = find_units(model)  # attention: attn.c_attn (fused qkv) and attn.c_proj
    assert [u.module for u in units] == ["attn.c_attn", "attn.c_proj"] * 2
    assert units[0].transposed and units[0].shape == (24, 72)
    engine = GradientEngine(model, units, progress=False)
    got = engine.per_example(encode(tok, TEXTS, batch_size=3))
    ref = brute_force(model, tok, TEXTS, [u.param for u in units])
    for g, r in zip(got, ref):
        assert rel_err(g, r) < 1e-10
    sq, _ = engine.norms_and_dots(encode(tok, TEXTS, batch_size=3), None)
    assert rel_err(sq, torch.stack([(r * r).sum(1) for r in ref])) < 1e-10


@pytest.mark.parametrize("t,d_in,d_out", [(5, 40, 30), (50, 6, 7)])
def test_gram_and_direct_norms_agree(t, d_in, d_out):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, t, d_in, generator=gen, dtype=torch.float64)
    d = torch.randn(3, t, d_out, generator=gen, dtype=torch.float64)
    explicit = torch.stack([sum(torch.outer(d[b, s], x[b, s]) for s in range(t)) for b in range(3)])
    ref = (explicit ** 2).sum(dim=(1, 2))
    assert rel_err(_hooks.sq_norms(x, d), ref) < 1e-12
    assert rel_err(((d @ d.transpose(1, 2)) * (x @ x.transpose(1, 2))).sum((1, 2)), ref) < 1e-12
    w = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
    assert rel_err(_hooks.dots(x, d, w), (explicit * w).sum((1, 2))) < 1e-12


def test_module_selection(tiny):
    model, _ = tiny
    block = transformer_blocks(model)[0][1]
    attn = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
    assert select_modules(block, "attention") == attn
    assert select_modules(block, "mlp") == ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert select_modules(block, ("q_proj", "mlp.down_proj")) == ["self_attn.q_proj", "mlp.down_proj"]
    units = find_units(model, "weights", ("v_proj",))
    assert [(u.layer, u.path, u.name) for u in units] == [
        (i, f"model.layers.{i}", f"model.layers.{i}.self_attn.v_proj.weight") for i in range(4)]
    with pytest.raises(ValueError, match="found no linear modules.*self_attn.q_proj"):
        find_units(model, "weights", ("query",))
    with pytest.raises(ValueError, match="modules='ffn'"):
        find_units(model, "weights", "ffn")
    with pytest.raises(ValueError, match="target='bias'"):
        find_units(model, "bias")
    with pytest.raises(ValueError, match="LoRA adapters"):
        find_units(model, "lora")


def test_model_state_is_restored(tiny):
    model, tok = tiny
    model.train()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.lm_head.weight.requires_grad_(False)
    flags["lm_head.weight"] = False
    engine = GradientEngine(model, find_units(model), progress=False)
    engine.per_example(encode(tok, TEXTS[:3]))
    assert model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_attached_lora_is_temporary(tiny64):
    model, tok = tiny64
    ids = torch.tensor([tok("The cat sat.")["input_ids"]])
    before = model(input_ids=ids).logits
    n_params = sum(p.numel() for p in model.parameters())
    with attached_lora(model, "attention", rank=4, alpha=8):
        units = find_units(model, "lora")
        assert len(units) == 4 * 4 * 2 and units[0].shape == (4, 32)
        assert torch.equal(model(input_ids=ids).logits, before)  # B = 0 at init
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert not any("lora" in n for n, _ in model.named_modules())
    assert torch.equal(model(input_ids=ids).logits, before)


def test_encode_pads_sorts_and_rejects_bad_input(tiny):
    _, tok = tiny
    batches = encode(tok, TEXTS, max_length=20, batch_size=3)
    lengths = [len(tok(t, truncation=True, max_length=20)["input_ids"]) for t in TEXTS]
    seen = []
    for ids, att, loss_mask, index in batches:
        assert ids.shape[1] == max(lengths[i] for i in index.tolist())
        assert att.sum(1).tolist() == [lengths[i] for i in index.tolist()]
        assert (loss_mask[:, 0] == 0).all() and (loss_mask[:, 1:] == att[:, 1:]).all()
        seen += index.tolist()
    assert sorted(seen) == list(range(len(TEXTS))) and batches.n_tokens == sum(lengths) - len(TEXTS)
    padded = encode(tok, TEXTS, max_length=20, include_pads=True, batch_size=3)
    assert all(ids.shape[1] == 20 and (m[:, 1:] == 1).all() for ids, _, m, _ in padded)
    for kwargs, message in [({"max_length": 1}, "max_length=1"), ({"batch_size": 0}, "batch_size=0")]:
        with pytest.raises(ValueError, match=message):
            encode(tok, TEXTS, **kwargs)
    with pytest.raises(ValueError, match="examples=\\[\\]"):
        encode(tok, [])
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        encode(tok, ["fine", ""])
    with pytest.raises(ValueError, match="expected a str"):
        encode(tok, [3])
