"""Tiny, download-free models and tokenizers for tests, smoke runs and examples.

Everything here is built in-process from a seed, so tests need no network and run in
seconds; the numbers are meaningless, the shapes and code paths are the real ones.
"""
from __future__ import annotations

import string

import torch

__all__ = ["char_tokenizer", "tiny_llama", "tiny_model"]

_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


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
    with torch.random.fork_rng(devices=[]):  # seeded init; the caller's RNG state is left alone
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(dtype)
    model.eval()
    model._layerif_model_id = f"tiny-llama-{n_layers}x{hidden}-seed{seed}"
    return model


def tiny_model(n_layers: int = 4, seed: int = 0, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)``: :func:`tiny_llama` with the matching :func:`char_tokenizer`."""
    return tiny_llama(n_layers=n_layers, seed=seed, dtype=dtype), char_tokenizer()
