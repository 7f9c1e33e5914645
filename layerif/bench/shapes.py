"""The paper's model shapes as transformers configs, for random-weight benchmarks.

Written from each model's published ``config.json`` (no download): the block count, widths,
heads and vocabulary are what set the cost of every stage; the weights are random.
:func:`build` makes the model; :func:`scaled` shrinks a shape (fewer blocks, a narrower
width with the same head size where it fits) so that the same code runs on a CPU in a test.
"""
from __future__ import annotations

import torch

from .._config import check
from ..rng import seeded

__all__ = ["SHAPES", "PAPER_DTYPE", "build", "config", "scaled"]

#: model_type plus the config fields that differ from transformers' defaults.
SHAPES: dict[str, dict] = {
    "mistral-7b": dict(  # mistralai/Mistral-7B-v0.1
        model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=32768, rope_theta=10000.0, sliding_window=4096,
        rms_norm_eps=1e-5, tie_word_embeddings=False),
    "llama2-7b": dict(  # meta-llama/Llama-2-7b-hf
        model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, head_dim=128,
        max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "gemma-7b": dict(  # google/gemma-7b
        model_type="gemma", vocab_size=256000, hidden_size=3072, intermediate_size=24576,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=16, head_dim=256,
        max_position_embeddings=8192, hidden_act="gelu_pytorch_tanh", rms_norm_eps=1e-6,
        tie_word_embeddings=True),
    "smollm2-135m": dict(  # HuggingFaceTB/SmolLM2-135M-Instruct
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
        max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=True),
}

#: The dtype the paper's runs use for each shape (bfloat16 for the 7B models).
PAPER_DTYPE = {"mistral-7b": torch.bfloat16, "llama2-7b": torch.bfloat16,
               "gemma-7b": torch.bfloat16, "smollm2-135m": torch.float32}


def scaled(shape: str, layers: int | None = None, hidden: int | None = None) -> dict:
    """The fields of ``shape`` with ``layers`` blocks and width ``hidden`` (None: unchanged).

    A narrower width keeps the MLP ratio and the head size (fewer heads; a width below the
    head size becomes one head of that width) and the grouping of key/value heads.
    """
    check(shape in SHAPES, "shape", shape, f"one of {tuple(SHAPES)}")
    fields = dict(SHAPES[shape])
    if layers is not None:
        check(isinstance(layers, int) and layers >= 1, "layers", layers, "an int >= 1")
        fields["num_hidden_layers"] = layers
    if hidden is not None:
        check(isinstance(hidden, int) and hidden >= 8 and hidden % 8 == 0, "hidden", hidden,
              "an int >= 8, a multiple of 8")
        heads, kv, head_dim = (fields[k] for k in ("num_attention_heads", "num_key_value_heads", "head_dim"))
        new_heads = max(1, hidden // head_dim) if hidden % head_dim == 0 else 1
        group = heads // kv
        fields.update(hidden_size=hidden, head_dim=hidden // new_heads,
                      intermediate_size=8 * round(fields["intermediate_size"] * hidden
                                                  / fields["hidden_size"] / 8),
                      num_attention_heads=new_heads,
                      num_key_value_heads=new_heads // group if new_heads % group == 0 else new_heads)
    return fields


def config(fields: dict, vocab_size: int | None = None):
    """A transformers config from :func:`scaled` fields (``vocab_size`` overrides)."""
    from transformers import AutoConfig

    kw = {k: v for k, v in fields.items() if k != "model_type"}
    if vocab_size is not None:
        kw["vocab_size"] = vocab_size
    return AutoConfig.for_model(fields["model_type"], **kw)


def build(fields: dict, device: torch.device, dtype: torch.dtype, seed: int = 0,
          vocab_size: int | None = None, name: str = "random"):
    """A causal LM of these fields with random weights, created on ``device`` in ``dtype``
    (no float32 copy on the host), in eval mode; the caller's RNG state is left alone."""
    from transformers import AutoModelForCausalLM

    cfg = config(fields, vocab_size)
    with seeded(seed, device), torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.eval()
    model._layerif_model_id = f"{name} (random weights)"
    return model
