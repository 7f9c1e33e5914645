"""A small base for configuration dataclasses: help text, validation, presets, JSON.

Every config in layerif is a frozen-free ``@dataclass`` whose fields carry
``metadata={"help": ..., "runtime": ...}`` (run-time fields are left out of a result's
identity, :meth:`ConfigBase.identity`); subclasses validate in ``__post_init__`` (through
:func:`check`) and expose presets as classmethods ``smoke()`` (tests) and ``paper()`` (the
authors' values). The book's sizes are not presets: they live in ``params/<profile>/*.yaml``,
read by the notebooks and the command line alike.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import PurePath
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["ConfigBase", "NonFiniteError", "check", "check_finite", "field", "jsonable"]


def field(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
          runtime: bool = False):
    """A dataclass field with help text (shown by ``Config.help()``).

    ``runtime=True`` marks a run-time field: one that says where or how a computation runs
    (device, memory strategy) but not what it computes, so it is left out of
    :meth:`ConfigBase.identity`. The marker is kept in the field's ``metadata["runtime"]``.
    """
    kw: dict[str, Any] = {"metadata": {"help": help, "runtime": bool(runtime)}}
    if default is not dataclasses.MISSING:
        kw["default"] = default
    if default_factory is not dataclasses.MISSING:
        kw["default_factory"] = default_factory
    return dataclasses.field(**kw)


def check(ok: bool, name: str, value: Any, expected: str) -> None:
    """Raise ``ValueError`` naming the parameter and its value unless ``ok``."""
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid: expected {expected}")


class NonFiniteError(ValueError):
    """A tensor that must be finite (weights, activations, statistics) holds NaN or inf."""


def check_finite(tensor: torch.Tensor, where: str, what: str = "weights") -> None:
    """Raise :class:`NonFiniteError` naming ``where`` unless every entry of ``tensor`` is finite.

    The one finiteness check of pruning and evaluation: ``where`` names the module (e.g.
    ``model.layers.3.self_attn.q_proj``) or the argument, ``what`` the quantity (``weights``,
    ``calibration statistics (act_sq_norm)``, ``log-likelihoods``).

    The entries are read in full only when their sum is not finite (a NaN or inf entry always
    makes the sum NaN or inf; finite entries whose sum overflows are then read exactly): the
    sum is ~20x cheaper than ``isfinite(tensor).all()`` and pruning checks every matrix.
    """
    if (not tensor.is_floating_point() or tensor.device.type == "meta"  # offloaded: no values
            or bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())):
        return
    n_nan = int(torch.isnan(tensor).sum())
    n_inf = int(torch.isinf(tensor).sum())
    raise NonFiniteError(f"{where}: {what} hold {n_nan} NaN and {n_inf} inf of {tensor.numel()} "
                         "values (a corrupt model or input); nothing computed from them is kept")


def _bool_where_not_declared(config) -> None:
    """Reject ``True``/``False`` in a field whose annotation does not admit a bool (Python's
    bool is an int, so ``n_train=True`` would otherwise pass as 1)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        declared = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if isinstance(value, bool) and "bool" not in declared and "Any" not in declared:
            check(False, f.name, value, f"{declared} (a bool is not a number)")


def jsonable(value: Any) -> Any:
    """``value`` with JSON-ready leaves: dtypes and devices as strings, tuples as lists, dict
    keys as strings, numpy scalars as Python numbers, paths as strings."""
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, (torch.device, PurePath)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


class ConfigBase:
    """Mixin for config dataclasses: ``to_dict``, ``identity``, ``from_dict``, ``replace``,
    ``help``."""

    PRESETS: tuple[str, ...] = ("smoke", "paper")

    def __post_init__(self):
        _bool_where_not_declared(self)

    def __init_subclass__(cls, **kwargs):
        """Every config's validation first rejects bools in non-bool fields (one rule for all
        configs, run before the subclass's own ``__post_init__`` checks)."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is None:
            return  # the inherited __post_init__ already runs the rule

        @functools.wraps(own)
        def post_init(self):
            _bool_where_not_declared(self)
            own(self)

        cls.__post_init__ = post_init

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields (dtypes as strings, tuples as lists)."""
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def identity(self) -> dict[str, Any]:
        """:meth:`to_dict` without the run-time fields: what decides the result's values.

        Two configs with equal identities compute the same result; they may differ in where
        or how it runs (``field(..., runtime=True)``).
        """
        runtime = set(self.runtime_fields())
        return {k: v for k, v in self.to_dict().items() if k not in runtime}

    def runtime(self) -> dict[str, Any]:
        """The run-time fields only, JSON-ready (the complement of :meth:`identity`)."""
        runtime = set(self.runtime_fields())
        return {k: v for k, v in self.to_dict().items() if k in runtime}

    @classmethod
    def runtime_fields(cls) -> tuple[str, ...]:
        """Names of the fields declared with ``field(..., runtime=True)``, in field order."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("runtime", False))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Rebuild from :meth:`to_dict` (or :meth:`identity`) output; absent fields take their
        defaults, unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {unknown}")
        kwargs = dict(data)
        for f in dataclasses.fields(cls):
            if f.name in kwargs and isinstance(kwargs[f.name], str) and "dtype" in f.name:
                kwargs[f.name] = getattr(torch, kwargs[f.name])
            if f.name in kwargs and isinstance(kwargs[f.name], list):
                kwargs[f.name] = tuple(kwargs[f.name])
        return cls(**kwargs)

    def replace(self, **changes):
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides):
        """Build a named preset (``smoke``, ``paper``) with optional overrides."""
        factory: Callable | None = getattr(cls, name, None) if name in cls.PRESETS else None
        if factory is None:
            raise ValueError(f"preset={name!r} is unknown for {cls.__name__}: choose from {cls.PRESETS}")
        base = factory()
        return base.replace(**overrides) if overrides else base

    @classmethod
    def help(cls) -> str:
        """One line per field: name, default and help text."""
        lines = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
            tag = " [run-time]" if f.metadata.get("runtime", False) else ""
            lines.append(f"{f.name} (default {default!r}){tag}: {f.metadata.get('help', '')}")
        return "\n".join(lines)
