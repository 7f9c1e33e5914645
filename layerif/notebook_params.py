"""A notebook's sources and parameters: the notebooks in run order, their ``needs``, the
parameters cell (names, literal defaults, the types a ``--params`` file must match) and the
profile files ``params/<profile>/<name>.yaml``. Import-light: no torch, no kernel."""
from __future__ import annotations

from pathlib import Path

import yaml

from . import store
from ._config import check

__all__ = ["MODEL_DTYPES", "cell_params", "check_param_types", "list_notebooks", "load_options",
           "load_params", "needs_of", "notebook_source", "parameter_defaults", "parameter_names",
           "read_params_file"]

#: The values of a notebook's optional ``model_dtype`` parameter (the dtype its models load
#: in); the first, float32, is the default (the cpu and smoke profiles').
MODEL_DTYPES = ("float32", "bfloat16", "float16")


def list_notebooks(root: str | Path | None = None) -> list[str]:
    """Notebook names (file stems under ``notebooks/``) in run order."""
    folder = Path(root or store.study_root()) / "notebooks"
    return sorted(p.stem for p in folder.glob("*.md"))


def notebook_source(name: str, root: Path) -> Path:
    """``notebooks/<name>.md`` under ``root``; a one-line error naming the notebooks there."""
    source = root / "notebooks" / f"{name}.md"
    check(source.exists(), "name", name, f"a notebook: one of {list_notebooks(root)}")
    return source


def load_params(name: str, profile: str, root: str | Path | None = None) -> dict:
    """The papermill parameters of notebook ``name`` for ``profile`` (``{}`` if no file).

    ``profile`` itself is always injected, so notebooks know where to write results.
    """
    check(profile in store.PROFILES, "profile", profile, f"one of {store.PROFILES}")
    path = Path(root or store.study_root()) / "params" / profile / f"{name}.yaml"
    params = {}
    if path.exists():
        params = yaml.safe_load(path.read_text()) or {}
        check(isinstance(params, dict), str(path), params, "a mapping of parameter names to values")
    params.setdefault("profile", profile)
    return params


def load_options(params) -> dict:
    """The keyword arguments of :func:`layerif.models.load_model` that a notebook's ``params``
    set: ``{"dtype": params["model_dtype"]}`` (one of :data:`MODEL_DTYPES`; ``"float32"``,
    ``load_model``'s own default, when ``params`` has none) and, when ``params["device_map"]``
    is not None, that ``device_map`` (``"auto"``: accelerate spreads the model over the GPUs
    present; a ``{module: device}`` mapping). The experiments pass them to every model they
    load (the paper profile loads its 7B models in bfloat16 with ``device_map="auto"``).

    Raises:
        ValueError: a ``model_dtype`` that is not one of :data:`MODEL_DTYPES`, or a
            ``device_map`` that is neither None, a string nor a mapping.
    """
    dtype = params.get("model_dtype", MODEL_DTYPES[0])
    check(isinstance(dtype, str) and dtype in MODEL_DTYPES, "model_dtype", dtype,
          f"one of {MODEL_DTYPES}")
    device_map = params.get("device_map")
    check(device_map is None or (isinstance(device_map, (str, dict)) and device_map != ""),
          "device_map", device_map, 'None (one device), "auto" or a {module: device} mapping')
    return {"dtype": dtype, **({} if device_map is None else {"device_map": device_map})}


def needs_of(name: str, root: str | Path | None = None) -> list[str]:
    """The notebooks ``name`` reads results from (its front matter's ``layerif.needs``).

    Raises:
        ValueError: ``needs`` is not a list of names of notebooks earlier in run order.
    """
    import jupytext

    root = Path(root or store.study_root())
    meta = jupytext.read(notebook_source(name, root)).metadata.get("layerif", {})
    needs = meta.get("needs", []) if isinstance(meta, dict) else meta
    order = list_notebooks(root)
    earlier = order[: order.index(name)]
    ok = isinstance(needs, list) and all(isinstance(n, str) and n in earlier for n in needs)
    check(ok, f"notebooks/{name}.md layerif.needs", needs,
          f"a list of notebooks earlier in run order (from {earlier})")
    return list(needs)


def read_params_file(path: str | Path) -> dict:
    """The parameters in a YAML file (``--params FILE``): a mapping of names to values.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not YAML, or not a non-empty mapping with string keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--params {str(path)!r} does not exist: expected a YAML file "
                                "of parameter names and values, e.g. 'n_examples: 20'")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        params = f"unreadable YAML ({str(err).splitlines()[0]})"
    ok = isinstance(params, dict) and params and all(isinstance(k, str) for k in params)
    check(ok, f"--params {str(path)!r}", params,
          "a YAML mapping of parameter names to values, e.g. 'n_examples: 20'")
    return params


def _parameter_assignments(name: str, root: str | Path | None = None) -> list[tuple]:
    """``(name, value node)`` of every assignment in notebook ``name``'s parameters cell."""
    import ast

    import jupytext

    nb = jupytext.read(notebook_source(name, Path(root or store.study_root())))
    out = []
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            for node in ast.parse(cell.source).body:
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, ast.AnnAssign) else [])
                out += [(t.id, node.value) for t in targets if isinstance(t, ast.Name)]
    return out


def parameter_names(name: str, root: str | Path | None = None) -> list[str]:
    """The names assigned in notebook ``name``'s cell tagged ``parameters``, in order."""
    return list(dict.fromkeys(n for n, _ in _parameter_assignments(name, root)))


def parameter_defaults(name: str, root: str | Path | None = None) -> dict:
    """The literal values the parameters cell assigns (``{name: value}``; a name assigned
    an expression that is not a literal is left out)."""
    import ast

    out = {}
    for key, node in _parameter_assignments(name, root):
        try:
            out[key] = ast.literal_eval(node) if node is not None else None
        except ValueError:
            out.pop(key, None)
    return out


_TYPE_NAMES = {bool: "a bool", int: "an int", float: "a number", str: "a string",
               list: "a list", tuple: "a list", dict: "a mapping"}


def _type_name(value) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _fits(value, like) -> bool:
    """``value`` (from YAML) has the type of the parameter cell's ``like``: bools only for
    bools, ints or floats for numbers, lists for lists or tuples (element by element when
    ``like``'s elements share one type), mappings for dicts; anything fits None, and None
    (YAML ``null``: off, all, not set, as ``recipe_search: null`` or ``n_examples: null``)
    fits anything."""
    if like is None or value is None:
        return True
    if isinstance(like, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(like, bool)
    if isinstance(like, (int, float)):
        return isinstance(value, int) or (isinstance(value, float) and isinstance(like, float))
    if isinstance(like, (list, tuple)):
        if not isinstance(value, list):
            return False
        kinds = {type(x) for x in like}
        return len(kinds) != 1 or all(_fits(x, like[0]) for x in value)
    if isinstance(like, dict):
        return isinstance(value, dict)
    return isinstance(value, type(like))


def check_param_types(name: str, profile: str, params: dict, where: str,
                      root: str | Path | None = None) -> None:
    """Raise ``ValueError`` naming the first parameter whose value's type differs from its
    default's in the parameters cell (the profile's value where the cell's is None), e.g.
    ``models: smollm2-135m`` where a list is expected, before anything runs."""
    defaults = parameter_defaults(name, root)
    profile_values = load_params(name, profile, root)
    for key, value in params.items():
        like = defaults.get(key)
        like = profile_values.get(key) if like is None else like
        check(_fits(value, like), f"{where} {key}", value,
              f"{_type_name(like)} like the default {like!r} of {name}'s parameters cell")


def cell_params(name: str, namespace: dict, root: str | Path | None = None) -> dict:
    """Notebook ``name``'s parameters as its cells see them: ``{name: namespace[name]}`` for
    every name its ``parameters`` cell assigns (papermill's injected values included).

    A notebook passes ``globals()``; the result is what its experiment's ``run`` takes."""
    names = parameter_names(name, root)
    absent = [n for n in names if n not in namespace]
    check(not absent, "namespace", sorted(namespace)[:8], f"a namespace defining {absent}")
    return {n: namespace[n] for n in names}
