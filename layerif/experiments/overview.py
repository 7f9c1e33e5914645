"""The models and the data (notebook 00): each model's size and blocks, the tasks' split
sizes, one example of each task, and the check that no training text is also a test text."""
from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd

from .. import data
from ..models import describe, load_model, transformer_blocks
from ..notebook_params import load_options

__all__ = ["NOTEBOOK", "PAPER_MODELS", "Overview", "block_check", "conclusion", "example_table", "model_row", "overlap_check",
           "run", "verdicts"]

NOTEBOOK = "00_model_and_data"
#: The paper's model each embedded model stands in for: (name, parameters in billions, blocks).
PAPER_MODELS = {"smollm2-135m": ("Mistral-7B-v0.1", 7.24, 32), "gemma3-270m": ("Gemma-7B", 8.54, 28)}


@dataclass(frozen=True)
class Overview:
    """What notebook 00 shows: one row per model, the first model's per-block table (first and
    last three blocks), each model's ``(blocks found, config's layers)``, the tasks' split
    sizes, one training example per task, and the train/test text overlap per task."""

    models: pd.DataFrame
    blocks: pd.DataFrame
    block_counts: dict
    sizes: pd.DataFrame
    examples: pd.DataFrame
    overlaps: pd.Series


def model_row(name: str, load_kwargs: dict | None = None) -> tuple[dict, pd.DataFrame, tuple[int, int]]:
    """Load ``name`` on the CPU (``load_kwargs``: more arguments of :func:`layerif.load_model`,
    e.g. its ``dtype``): its summary row, :func:`layerif.describe` table, and
    ``(blocks found structurally, config.num_hidden_layers)``."""
    start = time.perf_counter()
    model, _ = load_model(name, device="cpu", **(load_kwargs or {}))
    seconds = time.perf_counter() - start
    blocks = describe(model)
    row = {"model": name, "architecture": type(model).__name__, "blocks": len(blocks),
           "parameters (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
           "linear parameters in blocks (M)": round(blocks["linear_params"].sum() / 1e6, 1),
           "vocabulary": model.config.vocab_size, "load time (s)": round(seconds, 1)}
    return row, blocks, (len(transformer_blocks(model)), model.config.num_hidden_layers)


def example_table(n: int = 1, width: int = 160) -> pd.DataFrame:
    """The first ``n`` training examples of every task: prompt (cut to ``width`` characters),
    choices and the gold answer; index task."""
    cut = lambda text: text if len(text) < width else text[:width - 3] + "..."  # noqa: E731
    rows = [{"task": task, "prompt": cut(ex.prompt),
             "choices": " | ".join(c.strip() for c in ex.choices),
             "gold": ex.choices[ex.label].strip()}
            for task in data.list_tasks() for ex in data.load_task(task, "train", n=n)]
    return pd.DataFrame(rows).set_index("task")


def _overlaps() -> pd.Series:
    texts = lambda task, split: {ex.text for ex in data.load_task(task, split)}  # noqa: E731
    return pd.Series({t: len(texts(t, "train") & texts(t, "test")) for t in data.list_tasks()},
                     name="train/test overlap")


def run(params: dict, profile: str = "smoke", results=None) -> Overview:
    """Notebook 00: load every model of ``params["models"]`` and read every task (nothing is
    saved; ``profile`` and ``results`` are accepted for the common signature)."""
    loaded = {m: model_row(m, load_options(params)) for m in params["models"]}
    first = loaded[params["models"][0]][1]
    return Overview(pd.DataFrame([row for row, _, _ in loaded.values()]).set_index("model"),
                    pd.concat([first.head(3), first.tail(3)]),
                    {m: counts for m, (_, _, counts) in loaded.items()}, data.split_sizes(),
                    example_table(params.get("examples_per_task", 1)), _overlaps())


def block_check(result: Overview) -> str:
    """One line per model: its number of blocks."""
    return "\n".join(f"{m} {found} blocks" for m, (found, _) in result.block_counts.items())


def overlap_check(result: Overview) -> str:
    """The tasks read and their training texts found in the test split, in all."""
    return f"tasks: {len(result.overlaps)} | train/test overlaps: {int(result.overlaps.sum())}"


def conclusion(result: Overview):
    """What the numbers say, per model: its size and depth beside the paper model it stands
    in for (:data:`PAPER_MODELS`), as rendered Markdown."""
    from .prose import bullets

    lines = []
    for name, row in result.models.iterrows():
        paper, billions, blocks = PAPER_MODELS.get(name, ("(no paper model)", float("nan"), 0))
        lines.append(f"{name} stands in for {paper}: {row['parameters (M)']:.0f}M parameters, "
                     f"{billions * 1e3 / row['parameters (M)']:.0f}x fewer than its "
                     f"{billions:g}B, in {row['blocks']} blocks against its {blocks}.")
    return bullets(lines)


def verdicts(result: Overview, level: float = 0.05) -> list:
    """Notebook 00 decides no claim."""
    return []
