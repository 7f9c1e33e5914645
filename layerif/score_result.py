"""The result of :func:`layerif.scores.layer_scores` and its provenance.

:class:`ScoreConfig` (how influence is computed), :class:`LayerScores` (the per-unit
influence matrix ``[n_units, n_train]``, DataInf sign, with its per-block and per-matrix
aggregates, :func:`aggregate_values`) and its store identity (:func:`score_identity`),
saved and loaded through :mod:`layerif.store`.
"""
from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from . import distributed, frames, store
from ._config import ConfigBase, check, field
from .models import resolve_device

__all__ = ["AGGREGATIONS", "KIND", "LayerScores", "ScoreConfig", "aggregate_values",
           "score_identity"]

AGGREGATIONS = ("positive", "top", "all")
KIND = "layer_scores"


@dataclass
class ScoreConfig(ConfigBase):
    """How :func:`layerif.scores.layer_scores` computes influence (validated at construction)."""

    method: str = field("datainf", help="datainf | hessian_free (TracIn-style) | exact")
    target: str = field("weights", help="weights (full linear weights, as the authors) | lora")
    modules: str | tuple = field("attention", help="attention | mlp | all | tuple of names "
                                 "such as ('q_proj', 'v_proj')")
    unit: str = field("tensor", help="Hessian block: tensor (DataInf) | block (whole layer)")
    lora_rank: int = field(8, help="rank of fresh LoRA adapters (target='lora' on a model "
                           "without adapters; existing adapters are used as they are)")
    lora_alpha: float = field(16.0, help="alpha of fresh LoRA adapters")
    damping: float = field(0.1, help="lambda = damping * mean squared gradient, per unit")
    n_train: int | None = field(None, help="use the first n_train training examples (None: all)")
    n_val: int | None = field(None, help="use the first n_val validation examples (None: all)")
    batch_size: int = field(8, help="examples per forward/backward pass")
    max_length: int = field(128, help="truncation length in tokens")
    include_pads: bool = field(False, help="pad to max_length and count pads in the loss "
                               "(the authors' labels = input_ids)")
    storage: str = field("auto", help="auto | memory (keep per-example gradients) | stream "
                         "(recompute passes)", runtime=True)
    memory_budget_gb: float = field(4.0, help="largest per-example gradient store for "
                                    "storage='auto'", runtime=True)
    seed: int = field(0, help="seed of fresh LoRA adapters")
    device: str = field("auto", help="auto (CUDA if present) | cpu | cuda | cuda:1 ...; the "
                        "model is moved there", runtime=True)
    dtype: torch.dtype | None = field(None, help="dtype of the gradient maths (None: the "
                                      "model's, at least float32)")

    def __post_init__(self):
        check(self.method in ("datainf", "hessian_free", "exact"), "method", self.method,
              "'datainf', 'hessian_free' or 'exact'")
        check(self.target in ("weights", "lora"), "target", self.target, "'weights' or 'lora'")
        if isinstance(self.modules, list):
            self.modules = tuple(self.modules)
        check(self.modules in ("attention", "mlp", "all") or (
            isinstance(self.modules, tuple) and self.modules
            and all(isinstance(m, str) for m in self.modules)), "modules", self.modules,
            "'attention', 'mlp', 'all' or a non-empty tuple of module names")
        check(self.unit in ("tensor", "block"), "unit", self.unit, "'tensor' or 'block'")
        check(isinstance(self.lora_rank, int) and self.lora_rank >= 1, "lora_rank",
              self.lora_rank, "an int >= 1")
        check(isinstance(self.lora_alpha, (int, float)) and self.lora_alpha > 0, "lora_alpha",
              self.lora_alpha, "a float > 0")
        check(isinstance(self.damping, (int, float)) and 0 < self.damping < math.inf,
              "damping", self.damping, "a finite float > 0")
        for name in ("n_train", "n_val"):
            value = getattr(self, name)
            check(value is None or (isinstance(value, int) and value >= 1), name, value,
                  "None or an int >= 1")
        check(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size",
              self.batch_size, "an int >= 1")
        check(isinstance(self.max_length, int) and self.max_length >= 2, "max_length",
              self.max_length, "an int >= 2")
        check(isinstance(self.include_pads, bool), "include_pads", self.include_pads, "a bool")
        check(self.storage in ("auto", "memory", "stream"), "storage", self.storage,
              "'auto', 'memory' or 'stream'")
        check(isinstance(self.memory_budget_gb, (int, float)) and self.memory_budget_gb > 0,
              "memory_budget_gb", self.memory_budget_gb, "a float > 0")
        check(self.dtype is None or self.dtype in (torch.float32, torch.float64), "dtype",
              self.dtype, "None, torch.float32 or torch.float64")
        resolve_device(self.device)

    @classmethod
    def smoke(cls) -> "ScoreConfig":
        """Seconds on a CPU: 16 train, 4 validation examples, 64 tokens."""
        return cls(n_train=16, n_val=4, max_length=64, batch_size=4)

    @classmethod
    def paper(cls) -> "ScoreConfig":
        """The authors' setting: first 300 train, 50 validation, full q/k/v/o weights."""
        return cls(n_train=300, n_val=50)


def aggregate_values(values: Tensor, mode: str = "positive", top_fraction: float = 0.25) -> Tensor:
    """Sum each row of an influence matrix ``[rows, n]`` the way ``mode`` says.

    Args:
        values: DataInf-sign influences (positive = harmful).
        mode: ``"positive"`` (sum of values <= 0, the helpful examples), ``"top"`` (sum of
            the ``ceil(top_fraction * n)`` smallest values), ``"all"`` (plain sum).
        top_fraction: fraction for ``"top"``, in (0, 1].

    Returns:
        ``Tensor[rows]``.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"mode={mode!r} is invalid: expected one of {AGGREGATIONS}")
    if not isinstance(top_fraction, (int, float)) or not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction={top_fraction!r} is invalid: expected a float in (0, 1]")
    if mode == "positive":
        return values.clamp(max=0).sum(dim=1)
    if mode == "all":
        return values.sum(dim=1)
    k = max(1, math.ceil(top_fraction * values.shape[1]))
    return values.topk(k, dim=1, largest=False).values.sum(dim=1)


@dataclass(eq=False)
class LayerScores:
    """Per-unit influence of training examples, with per-block and per-matrix views.

    Attributes:
        values: ``Tensor[n_units, n_train]`` (float64, CPU), DataInf sign.
        units: one row per unit (index ``unit``): layer, path, module, tensor, name, numel.
        train_ids, val_ids: the examples' ids, in column / input order.
        config: the :class:`ScoreConfig` used.
        model_id: the scored model.
        task: the task name, if given.
        blocks: every block's module path, indexed by layer.
        info: how it was computed (storage, number of passes, ...).
        model_dtype: the dtype the model was loaded in, when not float32 (``"bfloat16"``);
            part of the identity (:func:`layerif.store.identity`'s ``dtype``).
    """

    values: Tensor
    units: pd.DataFrame
    train_ids: list[str]
    val_ids: list[str]
    config: ScoreConfig
    model_id: str
    task: str | None = None
    blocks: pd.Series | None = None
    info: dict = dataclasses.field(default_factory=dict)
    model_dtype: str | None = None

    def __post_init__(self):
        if self.values.shape != (len(self.units), len(self.train_ids)):
            raise ValueError(f"values has shape {tuple(self.values.shape)}, expected "
                             f"({len(self.units)}, {len(self.train_ids)}) units x train examples")

    def __repr__(self) -> str:
        n_units, n = self.values.shape
        return (f"LayerScores(model_id={self.model_id!r}, task={self.task!r}, "
                f"method={self.config.method!r}, target={self.config.target!r}, "
                f"{self.units['layer'].nunique()} layers, {n_units} units, {n} train x "
                f"{len(self.val_ids)} val examples)")

    def _grouped(self, keys: list[str]) -> tuple[pd.DataFrame, Tensor]:
        """Unit rows summed per distinct ``keys`` (in unit order): ``(keys table, values)``."""
        parts = self.units.reset_index(drop=True).groupby(keys, sort=False).indices
        keyed = pd.DataFrame([k if isinstance(k, tuple) else (k,) for k in parts], columns=keys)
        vals = torch.stack([self.values[torch.as_tensor(rows)].sum(dim=0)
                            for rows in parts.values()])
        return keyed, vals

    def per_block(self) -> pd.DataFrame:
        """Block-level influence ``[layer x train example]`` (sum over the block's units)."""
        keyed, vals = self._grouped(["layer"])
        return pd.DataFrame(vals.numpy(), index=pd.Index(keyed["layer"], name="layer"),
                            columns=self.train_ids)

    def aggregate(self, mode: str = "positive", top_fraction: float = 0.25) -> pd.Series:
        """One score per block (see :func:`aggregate_values`), indexed by layer."""
        keyed, vals = self._grouped(["layer"])
        return pd.Series(aggregate_values(vals, mode, top_fraction).numpy(),
                         index=pd.Index(keyed["layer"], name="layer"), name="score")

    def table(self, top_fraction: float = 0.25) -> pd.DataFrame:
        """Per-block table: path, parameters scored, the three aggregates, helpful count."""
        keyed, vals = self._grouped(["layer", "path"])
        numel = self.units.groupby("layer")["numel"].sum()
        return pd.DataFrame({
            "path": keyed["path"].to_numpy(),
            "n_params": numel.loc[keyed["layer"]].to_numpy(),
            **{mode: aggregate_values(vals, mode, top_fraction).numpy() for mode in AGGREGATIONS},
            "n_helpful": (vals <= 0).sum(dim=1).numpy(),
        }, index=pd.Index(keyed["layer"], name="layer"))

    def per_matrix(self, mode: str = "positive", top_fraction: float = 0.25) -> pd.DataFrame:
        """Per (block, linear module) scores: index layer, columns path + one per module.

        LoRA A and B of one module are summed (they are one matrix's adapter).
        """
        keyed, vals = self._grouped(["layer", "path", "module"])
        keyed["score"] = aggregate_values(vals, mode, top_fraction).numpy()
        wide = keyed.pivot(index=["layer", "path"], columns="module", values="score")
        order = list(dict.fromkeys(self.units["module"]))
        wide = wide[order].reset_index().set_index("layer")
        wide.columns.name = None
        return wide

    # -- persistence ----------------------------------------------------------------
    def identity(self) -> dict:
        """This result's identity in :mod:`layerif.store`: kind ``layer_scores``, the config
        without run-time fields, the model id, ``data = {task, train_ids, val_ids}`` and the
        model's dtype when not float32."""
        return score_identity(self.config, self.model_id, self.task, self.train_ids, self.val_ids,
                              dtype=self.model_dtype)

    def save(self, directory: str | Path, overwrite: bool = False,
             seconds: float | None = None) -> Path:
        """Write ``influence.pt`` (float64 values), ``units.csv`` and ``manifest.json``
        atomically through :func:`layerif.store.save`; a re-save of the same identity
        replaces the folder. In a process group only rank 0 writes (the others return the
        path at once). ``seconds``: what computing the scores cost, kept in the manifest
        (``extra["compute_seconds"]``) for the cold cost of a run (:mod:`layerif.usage`).

        Raises:
            layerif.store.ResultMismatch: ``directory`` holds a result of another identity
                (config, model, task, examples, version) and ``overwrite`` is False.
        """
        if not distributed.is_main():
            return Path(directory)
        blocks = None if self.blocks is None else {int(k): v for k, v in self.blocks.items()}

        def write(folder: Path) -> None:
            # Serialised in memory, then written as plain bytes: a full disk raises
            # OSError(ENOSPC), not torch's "basic_ios::clear: iostream error".
            buffer = io.BytesIO()
            torch.save({"values": self.values}, buffer)
            (folder / "influence.pt").write_bytes(buffer.getvalue())
            self.units.to_csv(folder / "units.csv")

        extra = {"info": self.info, "blocks": blocks, "runtime": self.config.runtime()}
        if seconds is not None:
            extra["compute_seconds"] = round(float(seconds), 2)
        return store.save(directory, self.identity(), write, extra=extra, overwrite=overwrite)

    @classmethod
    def load(cls, directory: str | Path) -> "LayerScores":
        """Read a result written by :meth:`save` (whatever its identity); the config gets
        back its recorded run-time fields."""
        return cls._read(directory, store.load_manifest(directory, KIND))

    @classmethod
    def load_if_matching(cls, directory: str | Path, config: ScoreConfig, model_id: str,
                         task: str | None, train_ids, val_ids, dtype=None) -> "LayerScores | None":
        """The scores saved in ``directory`` if they have exactly this identity (``dtype``:
        the dtype the model was loaded in; None: float32).

        Run-time fields of ``config`` (device, storage, memory budget) do not matter.

        Returns:
            The scores, or None when nothing is saved there.

        Raises:
            layerif.store.ResultMismatch: scores of another identity are saved there.
        """
        ident = score_identity(config, model_id, task, train_ids, val_ids, dtype=dtype)
        manifest = store.load_if_matching(directory, ident)
        return None if manifest is None else cls._read(directory, manifest)

    @classmethod
    def _read(cls, directory: str | Path, manifest: dict) -> "LayerScores":
        directory = Path(directory)
        with store.reading(directory / "influence.pt"):  # a damaged file: one clear error
            values = torch.load(directory / "influence.pt", weights_only=True)["values"]
        with store.reading(directory / "units.csv"):
            frames.check_whole(directory / "units.csv")
            units = pd.read_csv(directory / "units.csv", index_col="unit")
            if len(units) != values.shape[0] or units.isna().any().any():
                raise ValueError(f"{len(units)} rows (some short) for the {values.shape[0]} "
                                 "units of influence.pt")
        extra = manifest.get("extra", {})
        blocks = extra.get("blocks")
        if blocks is not None:
            blocks = pd.Series({int(k): v for k, v in blocks.items()},
                               name="path").rename_axis("layer")
        data = manifest["data"]
        config = ScoreConfig.from_dict({**manifest["config"], **_usable(extra.get("runtime", {}))})
        return cls(values=values, units=units, train_ids=list(data["train_ids"]),
                   val_ids=list(data["val_ids"]), config=config, model_id=manifest["model_id"],
                   task=data.get("task"), blocks=blocks, info=extra.get("info", {}),
                   model_dtype=manifest.get("model_dtype"))


def _usable(runtime: dict) -> dict:
    """Recorded run-time fields, less a device this machine lacks (scores computed on a GPU
    load on a CPU; the config then says ``device="auto"``)."""
    try:
        resolve_device(runtime.get("device", "auto"))
    except ValueError:
        return {k: v for k, v in runtime.items() if k != "device"}
    return runtime


def score_identity(config: ScoreConfig, model_id: str | None, task: str | None, train_ids,
                   val_ids, dtype=None) -> dict:
    """The store identity of layer scores (shared by saving and :meth:`load_if_matching`);
    ``dtype``: the dtype the model was loaded in (None: float32)."""
    check(isinstance(config, ScoreConfig), "config", config, "a ScoreConfig")
    return store.identity(KIND, config, model_id, {"task": task, "train_ids": list(train_ids),
                                                   "val_ids": list(val_ids)}, dtype=dtype)
