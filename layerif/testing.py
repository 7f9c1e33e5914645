"""Tiny, download-free models and tokenizers for tests, smoke runs and examples.

Everything here is built in-process from a seed, so tests need no network and run in
seconds; the numbers are meaningless, the shapes and code paths are the real ones.
"""
from __future__ import annotations

import string

import torch

from .rng import seeded

__all__ = ["char_tokenizer", "shared_model", "tiny_llama", "tiny_model"]

_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
_LOADED: dict = {}


def char_tokenizer():
    """A character-level fast tokenizer over printable ASCII (vocab 104) with pad/bos/eos.

    Right padding, ``<pad>`` as pad token, BOS prepended like Llama's tokenizer.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, decoders
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - {"\x0b", "\x0c"})
    vocab = {tok: i for i, tok in enumerate(_SPECIALS + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="right",
    )
    return fast


def tiny_llama(
    n_layers: int = 4,
    hidden: int = 32,
    intermediate: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    vocab_size: int = 104,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A randomly initialised ``LlamaForCausalLM`` small enough for float64 brute force."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    with seeded(seed):  # seeded init; the caller's RNG state is left alone
        model = LlamaForCausalLM(config).to(dtype)
    model.eval()
    model._layerif_model_id = f"tiny-llama-{n_layers}x{hidden}-seed{seed}"
    return model


def tiny_model(n_layers: int = 4, seed: int = 0, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)``: :func:`tiny_llama` with the matching :func:`char_tokenizer`."""
    return tiny_llama(n_layers=n_layers, seed=seed, dtype=dtype), char_tokenizer()


def shared_model(name: str = "smollm2-135m", device="cpu", dtype=torch.float32):
    """``layerif.load_model(name, device=device, dtype=dtype)``, loaded once per process: later
    calls with the same model, resolved device and dtype return the same ``(model, tokenizer)``.

    For tests that only read the model (a test that changes its weights or modules works on a
    ``copy.deepcopy``); loading SmolLM2 or Gemma-3 costs seconds, mostly in the tokenizer. Only
    embedded models: a local folder's weights can change under the same path.
    """
    from .models import EMBEDDED_MODELS, load_model, resolve_device, resolve_dtype

    if name not in EMBEDDED_MODELS:
        raise ValueError(f"name={name!r} is invalid: expected an embedded model, one of "
                         f"{sorted(EMBEDDED_MODELS)}")
    key = (name, str(resolve_device(device)), resolve_dtype(dtype))
    if key not in _LOADED:
        _LOADED[key] = load_model(name, device=device, dtype=dtype)
    return _LOADED[key]
