"""Where two JSON-like values differ, one readable line per differing leaf.

Used by the store to say why a saved result is not the one asked for
(:class:`layerif.store.ResultMismatch`).
"""
from __future__ import annotations

import json
from typing import Any

__all__ = ["differences"]

_ABSENT = object()


def _short(value: Any, width: int = 60) -> str:
    text = "<absent>" if value is _ABSENT else repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _list_difference(path: str, saved: list, given: list) -> str:
    """Lengths and the first differing element (``<absent>`` past the shorter list's end)."""
    n = max(len(saved), len(given))
    pad = lambda xs: list(xs) + [_ABSENT] * (n - len(xs))  # noqa: E731
    first = next(i for i, (a, b) in enumerate(zip(pad(saved), pad(given))) if a != b)
    return (f"{path}: {len(saved)} items (saved) vs {len(given)} (given), first difference at "
            f"[{first}]: {_short(pad(saved)[first], 30)} (saved) vs "
            f"{_short(pad(given)[first], 30)} (given)")


def differences(saved: Any, given: Any, path: str = "") -> list[str]:
    """One line per differing leaf of two JSON-like values, as dotted paths.

    Dicts are compared key by key; lists longer than 4 items, or of unequal length, are
    summarised (lengths and first differing element); other values are shown side by side:
    ``data.task: 'mrpc' (saved) vs 'rte' (given)``.
    """
    if isinstance(saved, dict) and isinstance(given, dict):
        out = []
        for key in sorted(set(saved) | set(given), key=str):
            sub = f"{path}.{key}" if path else str(key)
            out += differences(saved.get(key, _ABSENT), given.get(key, _ABSENT), sub)
        return out
    if json.dumps(saved, sort_keys=True, default=repr) == json.dumps(given, sort_keys=True,
                                                                    default=repr):
        return []
    if (isinstance(saved, list) and isinstance(given, list)
            and (len(saved) != len(given) or len(saved) > 4)):
        return [_list_difference(path, saved, given)]
    return [f"{path}: {_short(saved)} (saved) vs {_short(given)} (given)"]
