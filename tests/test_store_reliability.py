"""The store under a user's and an operator's mistakes (issue 24, items 0, 3 and 4): a local
checkpoint is identified by its weights, concurrent saves never lose a result, a damaged
result is named and never read, and a non-finite table is never saved."""
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from layerif import data, fingerprint, store
from layerif.evaluate import EvalConfig
from layerif.evaluate import run as evaluate_run
from layerif.models import load_model, model_id
from layerif.scores import LayerScores, ScoreConfig, layer_scores
from layerif.testing import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
CHECKOUT = Path(__file__).resolve().parent.parent


def ident(task="mrpc", model="m"):
    return store.identity("toy", {"alpha": 1.0}, model, {"task": task, "ids": ["a", "b"]})


def write_text(text, pause=0.0):
    def write(folder):
        time.sleep(pause)
        (folder / "value.txt").write_text(text)
    return write


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


# --- 0. a local checkpoint is its weights, not its path ------------------------------------

def save_checkpoint(folder: Path, seed: int) -> Path:
    model, tok = tiny_model(seed=seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_overwritten_checkpoint_weights_are_another_model(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERIF_CACHE", str(tmp_path / "cache"))
    ckpt = save_checkpoint(tmp_path / "ckpt", seed=0)
    model, tok = load_model(str(ckpt), device="cpu")
    key = model_id(model)
    assert key.startswith(fingerprint.PREFIX) and str(ckpt) not in key  # the path is no identity
    assert store.identity("x", {}, str(ckpt), {})["model_id"] == key  # a name resolves the same
    config = ScoreConfig(n_train=2, n_val=1, max_length=24, batch_size=2, device="cpu")
    train, val = data.load_task("mrpc", "train", n=2), data.load_task("mrpc", "validation", n=1)
    scores = layer_scores(model, tok, train, val, config, task="mrpc", progress=False)
    scores.save(tmp_path / "scores")
    assert store.load_manifest(tmp_path / "scores")["model_label"] == str(ckpt.resolve())
    args = (config, str(ckpt), "mrpc", scores.train_ids, scores.val_ids)
    assert torch.equal(LayerScores.load_if_matching(tmp_path / "scores", *args).values, scores.values)
    save_checkpoint(ckpt, seed=1)  # new weights in the same folder
    with pytest.raises(store.ResultMismatch, match=r"model_id: 'weights-sha256:"):
        LayerScores.load_if_matching(tmp_path / "scores", *args)
    assert model_id(load_model(str(ckpt), device="cpu")[0]) == store.identity("x", {}, str(ckpt), {})["model_id"] != key


def test_same_relative_path_in_another_directory_is_another_model(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERIF_CACHE", str(tmp_path / "cache"))
    for place, seed in (("a", 0), ("b", 1)):
        save_checkpoint(tmp_path / place / "ckpt", seed)
    monkeypatch.chdir(tmp_path / "a")
    store.save(tmp_path / "r", ident(model="ckpt"), write_text("on a's weights"))
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(store.ResultMismatch, match="model_id"):
        store.load_if_matching(tmp_path / "r", ident(model="ckpt"))
    monkeypatch.chdir(tmp_path / "a")
    assert store.load_if_matching(tmp_path / "r", ident(model="ckpt")) is not None


def test_embedded_names_and_hub_ids_keep_their_identity(tmp_path, monkeypatch):
    # even beside a checkpoint folder of the same name (load_model takes the embedded model)
    save_checkpoint(tmp_path / "smollm2-135m", seed=0)
    monkeypatch.chdir(tmp_path)
    for name in ("smollm2-135m", "gemma3-270m", "org/model", "tiny-llama-4x32-seed0"):
        assert store.identity("x", {}, name, {})["model_id"] == name
    # committed results still match the identity rebuilt from their parts
    manifests = sorted((CHECKOUT / "results" / "cpu").rglob(store.MANIFEST))
    if not manifests:
        pytest.skip("no committed results")
    for path in manifests[:: max(1, len(manifests) // 6)]:
        saved = store.saved_identity(json.loads(path.read_text()))
        assert saved["model_id"] in ("smollm2-135m", "gemma3-270m")
        again = store.identity(saved["kind"], saved["config"], saved["model_id"], saved["data"])
        assert store.load_if_matching(path.parent, again) is not None


def test_fingerprint_hashes_each_file_once(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERIF_CACHE", str(tmp_path / "cache"))
    ckpt = save_checkpoint(tmp_path / "ckpt", seed=0)
    files = fingerprint.checkpoint_files(ckpt)
    assert "model.safetensors" in [p.name for p in files] and "config.json" in [p.name for p in files]
    hashed = []
    real = fingerprint.file_sha256
    monkeypatch.setattr(fingerprint, "file_sha256", lambda p: hashed.append(p) or real(p))
    fingerprint.digest_of.cache_clear()
    first = fingerprint.weights_fingerprint(ckpt)
    assert len(hashed) == len(files)
    assert fingerprint.weights_fingerprint(ckpt) == first and len(hashed) == len(files)
    fingerprint.digest_of.cache_clear()  # as a new process: the disk cache answers
    assert fingerprint.weights_fingerprint(ckpt) == first and len(hashed) == len(files)
    weights = ckpt / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1  # same size, one bit
    weights.write_bytes(bytes(blob))
    assert fingerprint.weights_fingerprint(ckpt) != first and len(hashed) == len(files) + 1
    # the reference: sha256 over (name, size, content sha256) of the files, sorted by name
    import hashlib
    rows = [[p.name, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()] for p in files]
    assert fingerprint.weights_fingerprint(ckpt) == hashlib.sha256(json.dumps(rows).encode()).hexdigest()


# --- 3. concurrent saves ------------------------------------------------------------------

def _save_one(target, identity, text, pause, barrier, queue):
    barrier.wait()
    try:
        store.save(target, identity, write_text(text, pause))
        queue.put((text, "saved"))
    except store.ResultMismatch:
        queue.put((text, "ResultMismatch"))
    except Exception as err:  # noqa: BLE001 - reported to the test
        queue.put((text, f"{type(err).__name__}: {err}"))


def _save_many(target, identity, times, barrier, queue):
    barrier.wait()
    errors = []
    for i in range(times):
        try:
            store.save(target, identity, write_text(f"run {i}"))
        except Exception as err:  # noqa: BLE001 - reported to the test
            errors.append(f"{type(err).__name__}: {err}")
    queue.put(errors)


def race(target, jobs):
    """Run ``jobs`` (function, args) in forked processes released together; their reports."""
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(len(jobs)), ctx.Queue()
    procs = [ctx.Process(target=f, args=(target, *args, barrier, queue)) for f, args in jobs]
    for p in procs:
        p.start()
    reports = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return reports


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks are POSIX")
def test_concurrent_saves_of_other_identities_one_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "environment", lambda: {"python": "fast"})
    for trial in range(3):
        target = tmp_path / f"r{trial}"
        # each write pauses, so every process passes the first identity check before any swaps
        reports = dict(race(target, [(_save_one, (ident(task=f"t{i}"), f"v{i}", 0.3))
                                     for i in range(4)]))
        winners = [text for text, status in reports.items() if status == "saved"]
        assert len(winners) == 1, reports
        assert sorted(reports.values()) == ["ResultMismatch"] * 3 + ["saved"], reports
        won = int(winners[0][1:])
        assert (target / "value.txt").read_text() == winners[0]
        assert store.load_if_matching(target, ident(task=f"t{won}")) is not None
        assert hidden(target) == []


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks are POSIX")
def test_concurrent_saves_of_one_identity_never_fail(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "environment", lambda: {"python": "fast"})
    target = tmp_path / "r"
    reports = race(target, [(_save_many, (ident(), 400)), (_save_many, (ident(), 400))])
    assert reports == [[], []]
    manifest = store.load_if_matching(target, ident())
    assert manifest is not None and sorted(manifest["files"]) == ["value.txt"]
    assert (target / "value.txt").read_text().startswith("run ")
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "value.txt"]
    assert hidden(target) == []


# --- 4. damaged results -------------------------------------------------------------------

def corrupt_message(err, name):
    text = str(err.value)
    assert name in text and "is corrupt" in text and "--overwrite" in text and "\n" not in text
    return text


def truncate(path: Path, keep: float = 0.5) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


def forget_file_record(folder: Path) -> None:
    """Make the manifest like one written before sizes and hashes were recorded."""
    manifest = json.loads((folder / store.MANIFEST).read_text())
    del manifest["files"]
    (folder / store.MANIFEST).write_text(json.dumps(manifest))


def test_damaged_manifest_names_the_file_and_the_fix(tmp_path):
    target = tmp_path / "r"
    store.save(target, ident(), write_text("x"))
    manifest = target / store.MANIFEST
    truncate(manifest)
    for call in (lambda: store.load_manifest(target), lambda: store.load_if_matching(target, ident()),
                 lambda: store.save(target, ident(), write_text("y"))):
        with pytest.raises(store.CorruptResult) as err:
            call()
        assert "not valid JSON" in corrupt_message(err, str(manifest))
    manifest.write_text('["a", "list"]')
    with pytest.raises(store.CorruptResult, match="JSON list without a 'kind'") as err:
        store.load_if_matching(target, ident())
    corrupt_message(err, str(manifest))
    store.save(target, ident(), write_text("re-run"), overwrite=True)  # what the message says
    assert store.load_if_matching(target, ident()) is not None


def hand_scores() -> LayerScores:
    units = pd.DataFrame({"path": ["m.0", "m.0", "m.1"], "layer": [0, 0, 1],
                          "module": ["q", "v", "q"], "tensor": ["weight"] * 3,
                          "name": ["m.0.q.weight", "m.0.v.weight", "m.1.q.weight"],
                          "numel": [4, 4, 4]}).rename_axis("unit")
    values = torch.tensor([[1.0, -2.0], [0.5, 0.25], [-1.0, 3.0]], dtype=torch.float64)
    return LayerScores(values=values, units=units, train_ids=["a", "b"], val_ids=["x"],
                       config=ScoreConfig(device="cpu"), model_id="hand", task="fixture")


@pytest.mark.parametrize("name", ["influence.pt", "units.csv"])
@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "old-manifest"])
def test_truncated_score_file_is_named(tmp_path, name, recorded):
    s = hand_scores()
    s.save(tmp_path / "s")
    if not recorded:
        forget_file_record(tmp_path / "s")
    truncate(tmp_path / "s" / name, 0.6)
    with pytest.raises(store.CorruptResult) as err:
        LayerScores.load(tmp_path / "s")
    corrupt_message(err, str(tmp_path / "s" / name))
    with pytest.raises(store.CorruptResult):
        LayerScores.load_if_matching(tmp_path / "s", s.config, "hand", "fixture", ["a", "b"], ["x"])
    s.save(tmp_path / "s", overwrite=True)
    assert torch.equal(LayerScores.load(tmp_path / "s").values, s.values)


def table() -> pd.DataFrame:
    return pd.DataFrame({"value": [0.5, 0.25, 0.125], "n": [1, 2, 3]},
                        index=pd.Index(["a", "b", "c"], name="task"))


@pytest.mark.parametrize("damage", ["emptied", "truncated", "row-dropped", "schema"])
@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "old-manifest"])
def test_damaged_table_is_never_loaded(tmp_path, damage, recorded):
    folder = tmp_path / "t"
    store.save_frame(folder, table(), ident())
    if not recorded:
        forget_file_record(folder)
    csv = folder / store.TABLE_CSV
    if damage == "emptied":
        csv.write_text("")
    elif damage == "truncated":
        truncate(csv, 0.7)
    elif damage == "row-dropped":  # cut exactly at a line break: only the row count tells
        csv.write_text("".join(csv.read_text().splitlines(keepends=True)[:-1]))
    else:
        truncate(folder / store.TABLE_SCHEMA)
    named = folder / store.TABLE_SCHEMA if damage == "schema" else csv
    for call in (lambda: store.load_frame(folder), lambda: store.load_frame(folder, ident()),
                 lambda: store.cached(folder, ident(), lambda: pytest.fail("recomputed"))):
        with pytest.raises(store.CorruptResult) as err:
            call()
        corrupt_message(err, str(named))
    assert store.cached(folder, ident(), table, overwrite=True).equals(table())
    pd.testing.assert_frame_equal(store.load_frame(folder, ident()), table())


def test_emptied_evaluation_table_is_not_loaded(tmp_path, monkeypatch):
    config = EvalConfig.smoke()
    out = tmp_path / "ev"
    saved = pd.DataFrame({"value": [12.5], "stderr": [np.nan], "n": [100]},
                         index=pd.MultiIndex.from_tuples([("boolq_passages", "perplexity")],
                                                         names=["task", "metric"]))
    store.save_frame(out, saved, evaluate_run.evaluation_identity("smollm2-135m", config),
                     allow_nonfinite=evaluate_run.NONFINITE_OK)
    assert evaluate_run.evaluate_and_save("smollm2-135m", config, out).status == "loaded"
    forget_file_record(out)  # as committed before the file record existed
    (out / store.TABLE_CSV).write_text("")
    monkeypatch.setattr("layerif.models.load_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(store.CorruptResult) as err:
        evaluate_run.evaluate_and_save("smollm2-135m", config, out)
    corrupt_message(err, str(out / store.TABLE_CSV))


def test_non_finite_tables_are_never_saved(tmp_path):
    bad = table()
    bad.loc["b", "value"] = np.nan
    with pytest.raises(ValueError, match=r"^frame column 'value' holds 1 non-finite value\(s\) "
                                         r"\(nan at row 'b'\).*allow_nonfinite") as err:
        store.save_frame(tmp_path / "f", bad, ident())
    assert "\n" not in str(err.value)
    bad.loc["c", "value"] = -np.inf
    with pytest.raises(ValueError, match="2 non-finite"):
        store.cached(tmp_path / "f", ident(), lambda: bad)
    assert not (tmp_path / "f").exists()
    indexed = pd.Series([1.0], index=pd.Index([np.inf], name="x"))
    with pytest.raises(ValueError, match="column 'x'"):
        store.save_frame(tmp_path / "i", indexed, ident())
    # declared columns hold NaN / inf as values (missing, undefined), round-tripped exactly
    store.save_frame(tmp_path / "f", bad, ident(), allow_nonfinite=["value"])
    pd.testing.assert_frame_equal(store.load_frame(tmp_path / "f"), bad, check_exact=True)
    assert store.cached(tmp_path / "g", ident(), lambda: bad, allow_nonfinite=True).equals(bad)
    with pytest.raises(ValueError, match="column 'value'"):
        store.save_frame(tmp_path / "h", bad, ident(), allow_nonfinite=["n"])


def test_slug_never_leaves_its_folder():
    assert store.slug("org/model") == "org--model" and store.slug("/abs/ckpt") == "abs--ckpt"
    for name in ("", "/", ".", "..", "../"):
        with pytest.raises(ValueError, match=r"^name=.* is invalid"):
            store.slug(name)
