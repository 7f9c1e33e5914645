"""The paper profile's dry run: every notebook with ``params/paper``, small enough for a CPU.

A paper-profile run differs from the book's in the paths it takes (7B checkpoints of other
architecture families loaded from a folder in their own dtype -- ``model_dtype: bfloat16``,
kept as is, so the stand-ins load in it too --, the paper presets, the
paper's tasks, block indices and lists), not only in its sizes. This module rewrites each
notebook's paper parameters into a *dry-run* form that keeps all of that and changes only

* **the models**: each paper model id becomes a random-weight stand-in of the same family
  and head layout (:func:`stand_in`: a few blocks, a narrow width, the checkpoint's dtype,
  the embedded SmolLM2 tokenizer cut to its first :data:`VOCAB` tokens), saved as a local
  checkpoint folder;
* **the sizes** (:data:`DRY_SIZES`: a handful of examples, short sequences, few bootstrap
  draws; block indices scaled to the stand-in's depth; :data:`TRIMS`: fewer repeats of a
  code path where a list only repeats it, e.g. one of five tasks for the LoRA-MoE grid;
  :data:`EXTRA`: a preset's sequence length);
* **the data**, where a paper task needs the hub: its registry stand-in (none today:
  ``params/paper`` already names the offline stand-ins SST-2 and SciQ).

Every change is a :class:`Substitution` that :func:`rewrite` returns and the run prints, so
the dry run says what it did not run as the paper does. A paper value of a size-like key that
no rule covers makes :func:`rewrite` fail: a new size parameter cannot slip through at 7B
scale. :func:`prepare` writes the rewritten parameters into a study root of their own (the
notebooks linked, results under ``<root>/results/paper``); :func:`execute` runs one
notebook's code cells in this process as its kernel would (an IPython shell with every
display format computed), so an error in any cell -- the experiment's ``run``, a table, a
figure -- fails loudly.
"""
from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ._config import check

__all__ = ["DRY_SIZES", "PAPER_MODELS", "VOCAB", "Substitution", "cut_vocabulary", "execute",
           "prepare", "rewrite", "stand_in", "stand_in_fields"]

#: The paper's models and their shapes (:data:`layerif.bench.shapes.SHAPES`).
PAPER_MODELS = {"mistralai/Mistral-7B-v0.1": "mistral-7b", "meta-llama/Llama-2-7b-hf": "llama2-7b",
                "google/gemma-7b": "gemma-7b"}

#: Dry-run value of each size-like key, wherever it occurs in a notebook's parameters.
DRY_SIZES: dict[str, Any] = {
    "n_train": 8, "n_val": 7, "n_eval": 4, "n_examples": 2, "max_length": 32,
    "n_samples": 2, "seq_len": 32, "ppl_samples": 2, "ppl_len": 32, "calibration": [2, 32],
    "owl_calibration": [2, 32], "n_boot": 20, "steps": 2, "val_subsets": 2,
    "sizes": "two n of the sweep within n_train", "seeds": "the first two",
    "blocks": "scaled to the stand-in's depth",
}
#: Lists cut to their ends (first, or first and last; more runs of the same code path):
#: ``(notebook, dotted-path regex) -> entries kept``.
TRIMS: dict[tuple[str, str], int] = {
    ("03_lora_moe", r"plans\..+\.tasks"): 1, ("05_pruning", r"task_specific\.tasks"): 2,
    ("05_pruning", r"fig3_sparsities"): 2, ("07_ablation_smoothing", r"epsilons"): 2,
    ("09_influence_validation", r"loo\.blocks"): 1}
#: Parameters added to a notebook's (a size the paper run takes from a preset).
EXTRA: dict[str, dict] = {"03_lora_moe": {"train": {"max_length": 32}}}
_LARGE = 64          # an int this large that no rule rewrote is a paper size: refused
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LAYERS, HIDDEN, HEADS = 4, 64, 4   # the stand-ins' depth, width and query heads
#: The stand-ins' vocabulary: the SmolLM2 tokenizer's first tokens (its special tokens, the 256
#: bytes and its first merges). The paper models' own (32000, 256000) set no code path.
VOCAB = 1024


@dataclass(frozen=True)
class Substitution:
    """One way the dry run differs from the paper run: ``notebook``'s parameter at ``where``
    (a dotted path) was ``paper`` and is ``dry``; ``why`` says which rule."""

    notebook: str
    where: str
    paper: Any
    dry: Any
    why: str

    def line(self) -> str:
        return f"dry run {self.notebook}: {self.where} = {self.dry!r} instead of {self.paper!r} ({self.why})"


# -- the stand-in models -------------------------------------------------------------------
def stand_in_fields(shape: str, layers: int = LAYERS, hidden: int = HIDDEN,
                    heads: int = HEADS) -> dict:
    """The config fields of a small model of ``shape``'s family and head layout.

    Kept from the paper's shape: ``model_type``, activation, norms, tying, the ratio of the
    MLP width to the model width, the grouping of key/value heads and the ratio of the
    attention width (heads x head size) to the model width (4/3 for Gemma-7B, whose q/k/v
    are wider than its residual stream); ``layers`` blocks of width ``hidden``."""
    from .bench.shapes import SHAPES

    check(shape in SHAPES, "shape", shape, f"one of {tuple(SHAPES)}")
    paper = SHAPES[shape]
    group = paper["num_attention_heads"] // paper["num_key_value_heads"]
    check(heads % group == 0, "heads", heads, f"a multiple of {shape}'s {group} query heads per key/value head")
    attention = paper["num_attention_heads"] * paper["head_dim"] / paper["hidden_size"]
    head_dim = 2 * round(attention * hidden / heads / 2)   # even: rotary halves it
    mlp = paper["intermediate_size"] / paper["hidden_size"]
    return {**paper, "num_hidden_layers": layers, "hidden_size": hidden,
            "intermediate_size": 8 * round(mlp * hidden / 8), "num_attention_heads": heads,
            "num_key_value_heads": heads // group, "head_dim": head_dim}


def cut_vocabulary(tokenizer, folder: str | Path, size: int = VOCAB):
    """Save ``tokenizer`` (a byte-level BPE tokenizer whose merges are in id order, as
    SmolLM2's) under ``folder`` with only its first ``size`` tokens and the merges that make
    them, and load it back. A text whose full tokens all fall below ``size`` tokenizes as
    before (BPE applies the lower-ranked merges first); any other text still tokenizes, in
    more, shorter tokens (every byte is a token).

    Raises:
        ValueError: ``size`` below the tokenizer's special tokens and bytes, or a tokenizer
            whose kept merges need a token past ``size``.
    """
    import json

    from transformers import AutoTokenizer

    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model = spec["model"]
    merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    first_merged = min((model["vocab"][a + b] for a, b in merges), default=len(model["vocab"]))
    specials = max((t["id"] for t in spec["added_tokens"]), default=-1)
    check(model["type"] == "BPE" and max(first_merged - 1, specials) < size <= len(model["vocab"]),
          "size", size, f"an int in [{max(first_merged, specials + 1)}, {len(model['vocab'])}] "
          "(the special tokens and bytes of a BPE vocabulary, at most all of it)")
    model["vocab"] = {t: i for t, i in model["vocab"].items() if i < size}
    model["merges"] = [[a, b] for a, b in merges if model["vocab"].get(a + b, size) < size]
    check(all(a in model["vocab"] and b in model["vocab"] for a, b in model["merges"]), "tokenizer",
          type(tokenizer).__name__, "merges in id order (each token made of lower-id ones)")
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return AutoTokenizer.from_pretrained(folder)


def stand_in(model_id: str, folder: str | Path, tokenizer, seed: int = 0) -> Path:
    """Save a random-weight stand-in of paper model ``model_id`` under ``folder`` (a
    Hugging Face checkpoint: config, safetensors in the paper run's dtype, the tokenizer);
    reused when already there. The vocabulary is the tokenizer's first :data:`VOCAB` tokens
    (:func:`cut_vocabulary`)."""
    import torch

    from .bench.shapes import PAPER_DTYPE, build

    check(model_id in PAPER_MODELS, "model_id", model_id, f"one of {tuple(PAPER_MODELS)}")
    shape = PAPER_MODELS[model_id]
    out = Path(folder) / model_id.split("/")[-1]
    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    tokenizer = cut_vocabulary(tokenizer, tmp)
    model = build(stand_in_fields(shape), torch.device("cpu"), PAPER_DTYPE[shape], seed,
                  vocab_size=len(tokenizer), name=f"{shape} stand-in")
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.config, key, getattr(tokenizer, key))
    model.save_pretrained(tmp, safe_serialization=True)
    os.replace(tmp, out)
    return out


# -- the parameters ------------------------------------------------------------------------
def _scaled_blocks(blocks: list, paper_layers: int) -> list:
    """Block indices of a ``paper_layers``-deep model at the same relative depth of a
    :data:`LAYERS`-deep one (negative ones stay negative), without repeats."""
    out = [math.floor(b * LAYERS / paper_layers) if b >= 0
           else -max(1, round(-b * LAYERS / paper_layers)) for b in blocks]
    return list(dict.fromkeys(out))


def _dry_value(key: str, value: Any, paper_layers: int) -> Any:
    if key == "sizes" and isinstance(value, list):   # an n sweep: its two smallest, within n_train
        return sorted({min(DRY_SIZES["n_train"], 2), DRY_SIZES["n_train"] // 2 + 1})
    if key == "seeds" and isinstance(value, list):
        return value[:2]
    if key == "blocks" and isinstance(value, list):
        return _scaled_blocks(value, paper_layers)
    if key in ("sizes", "seeds", "blocks") or key not in DRY_SIZES:
        return value
    return DRY_SIZES[key]


def rewrite(notebook: str, params: dict, models: dict[str, str],
            paper_layers: int = 32) -> tuple[dict, list[Substitution]]:
    """``params`` (a notebook's paper parameters) in dry-run form, and every change made.

    ``models`` maps each paper model id to its stand-in's folder; the ids are replaced
    wherever they occur (values and mapping keys). Sizes follow :data:`DRY_SIZES`, block
    indices :func:`_scaled_blocks`; a hub-only task becomes its offline stand-in.

    Raises:
        ValueError: a model id that has no stand-in, or an int >= 64 that no rule rewrote
            (a size the dry run would run at paper scale).
    """
    subs: list[Substitution] = []

    def walk(value: Any, where: str) -> Any:
        key = where.rsplit(".", 1)[-1]
        keep = next((n for (nb, pattern), n in TRIMS.items()
                     if nb == notebook and re.fullmatch(pattern, where)), None)
        if keep is not None and isinstance(value, list) and len(value) > keep:
            subs.append(Substitution(notebook, where, value, _ends(value, keep), "fewer runs of the same code path"))
            return walk(_ends(value, keep), where)
        if isinstance(value, dict):
            return {walk_key(k, where): walk(v, f"{where}.{k}" if where else str(k))
                    for k, v in value.items()}
        new = _dry_value(key, value, paper_layers)
        if new != value:
            subs.append(Substitution(notebook, where, value, new, "size"))
            return new
        if isinstance(value, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return leaf(value, where)

    def walk_key(k: Any, where: str) -> Any:
        return leaf(k, f"{where}.<key {k}>" if where else f"<key {k}>")

    def leaf(value: Any, where: str) -> Any:
        if isinstance(value, str) and value in models:
            subs.append(Substitution(notebook, where, value, models[value], "random-weight stand-in"))
            return models[value]
        if isinstance(value, str) and _HUB_ID.match(value) and not Path(value).exists():
            check(False, f"{notebook} {where}", value, f"a paper model with a stand-in: one of {tuple(models)}")
        task = _hub_task(value)
        if task is not None:
            subs.append(Substitution(notebook, where, value, task, "offline registry stand-in: the paper's task needs the hub"))
            return task
        large = isinstance(value, int) and not isinstance(value, bool) and value >= _LARGE
        check(not large, f"{notebook} {where}", value, "a size with a dry-run rule (layerif.dry_run.DRY_SIZES)")
        return value

    out = walk(params, "")
    for key, value in EXTRA.get(notebook, {}).items():
        merged = {**out.get(key, {}), **value}
        subs.append(Substitution(notebook, key, out.get(key), merged, "size the paper run takes from a preset"))
        out[key] = merged
    return out, subs


def _ends(values: list, keep: int) -> list:
    return values[:1] if keep == 1 else values[:keep - 1] + values[-1:]


def _hub_task(value: Any) -> str | None:
    """The offline stand-in of a hub-only task name (``"cola"``, ``"cola:instruct"``), else None."""
    if not isinstance(value, str):
        return None
    from .data.registry import TASKS

    name, sep, template = value.partition(":")
    spec = TASKS.get(name)
    if spec is None or spec.stand_in is None:
        return None
    return f"{spec.stand_in}{sep}{template}"


# -- the run -------------------------------------------------------------------------------
def _model_ids(value: Any) -> set[str]:
    """Every paper model id in a parameters value (mapping keys included)."""
    if isinstance(value, dict):
        return set().union(*(_model_ids(k) | _model_ids(v) for k, v in value.items()), set())
    if isinstance(value, list):
        return set().union(*(_model_ids(v) for v in value), set())
    return {value} if isinstance(value, str) and value in PAPER_MODELS else set()


def prepare(root: str | Path, notebooks: list[str] | None = None,
            source: str | Path | None = None) -> dict[str, tuple[dict, list[Substitution]]]:
    """A study root for the dry run: ``<root>/notebooks`` linked to ``source``'s, the stand-ins
    under ``<root>/models``, each notebook's rewritten paper parameters in
    ``<root>/params/paper``. Returns ``{notebook: (dry params, substitutions)}``."""
    from . import study
    from .models import load_model

    source = Path(source or study.repo_root())
    root = Path(root)
    names = notebooks or study.list_notebooks(source)
    paper = {n: study.load_params(n, "paper", source) for n in names}
    ids = set().union(*(_model_ids(p) for p in paper.values()), set())
    models = {}
    if ids:
        _, tokenizer = load_model("smollm2-135m", device="cpu")   # the stand-ins' tokenizer
        models = {m: str(stand_in(m, root / "models", tokenizer)) for m in sorted(ids)}
    (root / "params" / "paper").mkdir(parents=True, exist_ok=True)
    if not (root / "notebooks").exists():
        (root / "notebooks").symlink_to(source / "notebooks", target_is_directory=True)
    out = {}
    for name in names:
        params, subs = rewrite(name, paper[name], models)
        (root / "params" / "paper" / f"{name}.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        out[name] = (params, subs)
    return out


@contextmanager
def study_root(root: str | Path):
    """Within the block the study's root (``$LAYERIF_ROOT``) and working directory are
    ``root`` and ``root/notebooks`` (where a notebook's kernel starts); both restored after."""
    old_env, old_cwd = os.environ.get("LAYERIF_ROOT"), os.getcwd()
    os.environ["LAYERIF_ROOT"] = str(root)
    os.chdir(Path(root) / "notebooks")
    try:
        yield Path(root)
    finally:
        os.chdir(old_cwd)
        if old_env is None:
            os.environ.pop("LAYERIF_ROOT", None)
        else:
            os.environ["LAYERIF_ROOT"] = old_env


def _shell():
    """The in-process IPython shell (fresh namespace) with every display format computed, as a
    notebook front end asks for them (HTML tables, PNG figures, ...)."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.enable_gui = lambda gui=None: None   # no event loop: `%matplotlib inline` needs none
    shell.reset(new_session=False)
    traceback = shell.InteractiveTB
    (getattr(traceback, "set_theme_name", None) or traceback.set_colors)("nocolor")  # IPython 9 | 8
    formatter = shell.display_formatter
    formatter.active_types = list(formatter.formatters)
    return shell


def execute(name: str, root: str | Path, params: dict, substitutions=()) -> dict:
    """Run notebook ``name``'s code cells in this process under :func:`study_root` with
    ``params`` injected after its parameters cell (papermill's order). Each substitution is
    printed first; one that replaces the paper's data is also a warning (a test run shows
    it). Returns the namespace. Raises the first failing cell's error. The matplotlib
    backend the notebook selects is undone after."""
    import warnings

    import jupytext
    import matplotlib

    for sub in substitutions:
        print(sub.line())
        if sub.why.startswith("offline registry stand-in"):
            warnings.warn(sub.line(), UserWarning, stacklevel=2)
    backend = matplotlib.get_backend()
    try:
        with study_root(root):
            nb = jupytext.read(f"{name}.md")
            shell = _shell()
            for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
                result = shell.run_cell(cell.source, store_history=False)
                error = result.error_before_exec or result.error_in_exec
                if error is not None:
                    raise RuntimeError(f"dry run of {name}: code cell {i} failed:\n{cell.source[:400]}") from error
                if "parameters" in cell.metadata.get("tags", []):
                    shell.user_ns.update({**params, "profile": "paper"})
            return dict(shell.user_ns)
    finally:
        matplotlib.use(backend)
