"""The results store: identities, refusal of foreign results, atomic saves under a real kill,
the manifest's environment, exact result tables, and LayerScores / MoE adapters through it."""
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import layerif
from layerif import _version, data, gitstate, moe, store
from layerif.moe import MoEConfig
from layerif.scores import LayerScores, ScoreConfig, layer_scores
from layerif.testing import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = ScoreConfig(n_train=4, n_val=2, max_length=32, batch_size=4, device="cpu")


@pytest.fixture(scope="module")
def scored():
    """Real scores of the tiny model on MRPC and on RTE, one config."""
    model, tok = tiny_model()
    out = {}
    for task in ("mrpc", "rte"):
        train = data.load_task(task, "train", n=CONFIG.n_train)
        val = data.load_task(task, "validation", n=CONFIG.n_val)
        out[task] = layer_scores(model, tok, train, val, CONFIG, task=task, progress=False)
    return out


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def ident(task="mrpc", **config):
    return store.identity("toy", {"alpha": 1.0, **config}, "m", {"task": task, "ids": ["a", "b"]})


def write_text(text):
    def write(folder):
        (folder / "value.txt").write_text(text)
    return write


# --- identities and refusals -------------------------------------------------------------

def test_identity_leaves_out_runtime_fields_and_normalises():
    assert ScoreConfig.runtime_fields() == ("storage", "memory_budget_gb", "device")
    assert MoEConfig.runtime_fields() == ()
    cfg = ScoreConfig(modules=("q_proj", "v_proj"), device="cpu", storage="stream")
    got = store.identity("layer_scores", cfg, "m", {"task": "t", "ids": ("a", "b")})
    expected_config = {k: v for k, v in cfg.to_dict().items()
                       if k not in ("storage", "memory_budget_gb", "device")}
    assert got == {"kind": "layer_scores", "config": expected_config, "model_id": "m",
                   "data": {"task": "t", "ids": ["a", "b"]}, "layerif_version": layerif.__version__}
    assert got["config"]["modules"] == ["q_proj", "v_proj"]
    assert cfg.runtime() == {"storage": "stream", "memory_budget_gb": 4.0, "device": "cpu"}
    plain = store.identity("x", {"k": (1, 2), 3: np.int64(4)}, None, {})
    assert plain["config"] == {"k": [1, 2], "3": 4} and type(plain["config"]["3"]) is int
    for kw, name in [({"kind": ""}, "kind"), ({"config": [1]}, "config"),
                     ({"model_id": 3}, "model_id"), ({"data": None}, "data")]:
        args = {"kind": "x", "config": {}, "model_id": None, "data": {}, **kw}
        with pytest.raises(ValueError, match=f"^{name}="):
            store.identity(**args)
    with pytest.raises(ValueError, match="^ident="):
        store.save("unused", {"kind": "x"}, write_text(""))


def test_foreign_task_refused_with_both_values_then_overwritten(scored, tmp_path):
    mrpc, rte = scored["mrpc"], scored["rte"]
    assert mrpc.config == rte.config
    mrpc.save(tmp_path)
    with pytest.raises(store.ResultMismatch) as err:
        rte.save(tmp_path)
    message = str(err.value)
    assert "data.task: 'mrpc' (saved) vs 'rte' (given)" in message
    assert "overwrite=True" in message.rstrip().splitlines()[-1]  # ends with how to proceed
    assert isinstance(err.value, store.ProvenanceError)  # the base of every refusal
    assert LayerScores.load(tmp_path).task == "mrpc"  # nothing was written
    rte.save(tmp_path, overwrite=True)
    back = LayerScores.load(tmp_path)
    assert back.task == "rte" and torch.equal(back.values, rte.values)
    assert back.train_ids == [e.id for e in data.load_task("rte", "train", n=4)]


def test_long_lists_are_summarised():
    saved = ident()
    given = json.loads(json.dumps(saved))
    saved["data"]["ids"] = [f"x{i}" for i in range(300)]
    given["data"]["ids"] = [f"x{i}" for i in range(17)] + ["other"] + saved["data"]["ids"][18:]
    lines = store.differences(saved, given)
    assert lines == ["data.ids: 300 items (saved) vs 300 (given), first difference at [17]: "
                     "'x17' (saved) vs 'other' (given)"]
    given["data"]["ids"] = saved["data"]["ids"][:200]
    assert store.differences(saved, given) == [
        "data.ids: 300 items (saved) vs 200 (given), first difference at [200]: "
        "'x200' (saved) vs <absent> (given)"]
    given["data"]["ids"], given["model_id"] = saved["data"]["ids"], "n"
    assert store.differences(saved, given) == ["model_id: 'm' (saved) vs 'n' (given)"]


def test_same_identity_replaces_other_identities_refuse(scored, tmp_path, monkeypatch):
    s = scored["mrpc"]
    s.save(tmp_path)
    first = store.load_manifest(tmp_path, "layer_scores")
    # run-time fields only: the same identity, replaced without overwrite
    moved = LayerScores(**{**vars(s), "config": s.config.replace(storage="stream",
                                                                 memory_budget_gb=1.0)})
    assert moved.identity() == s.identity()
    monkeypatch.setattr(store, "environment", lambda: {"python": "other"})  # not identity
    moved.save(tmp_path)
    manifest = store.load_manifest(tmp_path)
    assert manifest["environment"] == {"python": "other"}
    assert manifest["extra"]["runtime"]["storage"] == "stream"
    assert LayerScores.load(tmp_path).config == moved.config  # run-time fields restored
    assert {k: manifest[k] for k in store.IDENTITY_KEYS} == {k: first[k] for k in store.IDENTITY_KEYS}
    monkeypatch.undo()
    for change, key in [({"config": s.config.replace(damping=0.5)}, "config.damping"),
                        ({"model_id": "other-model"}, "model_id")]:
        with pytest.raises(store.ResultMismatch, match=key):
            LayerScores(**{**vars(s), **change}).save(tmp_path)
    monkeypatch.setattr(_version, "__version__", "99.0")
    with pytest.raises(store.ResultMismatch, match=r"layerif_version: '0\.1\.0' \(saved\) vs '99\.0'"):
        s.save(tmp_path)
    with pytest.raises(store.ResultMismatch, match="layerif_version"):
        LayerScores.load_if_matching(tmp_path, s.config, s.model_id, s.task, s.train_ids,
                                     s.val_ids)


def test_load_if_matching_layer_scores(scored, tmp_path):
    s = scored["mrpc"]
    args = (s.config, s.model_id, "mrpc", s.train_ids, s.val_ids)
    assert LayerScores.load_if_matching(tmp_path / "none", *args) is None
    s.save(tmp_path / "r")
    got = LayerScores.load_if_matching(tmp_path / "r", s.config.replace(device="auto"), *args[1:])
    assert torch.equal(got.values, s.values) and got.values.dtype == torch.float64
    pd.testing.assert_series_equal(got.aggregate(), s.aggregate())
    pd.testing.assert_frame_equal(got.units, s.units)
    assert sorted(files_of(tmp_path / "r")) == ["influence.pt", "manifest.json", "units.csv"]
    with pytest.raises(store.ResultMismatch, match="data.task: 'mrpc' \\(saved\\) vs 'rte'"):
        LayerScores.load_if_matching(tmp_path / "r", s.config, s.model_id, "rte", s.train_ids,
                                     s.val_ids)
    with pytest.raises(store.ResultMismatch, match="data.val_ids"):
        LayerScores.load_if_matching(tmp_path / "r", s.config, s.model_id, "mrpc", s.train_ids,
                                     s.val_ids[:1])


def test_folder_that_is_not_a_result_and_bad_callbacks(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(store.ProvenanceError, match="no manifest.json"):
        store.save(tmp_path, ident(), write_text("x"))
    assert files_of(tmp_path) == {"notes.txt": b"mine"}
    with pytest.raises(FileNotFoundError, match="holds no manifest.json"):
        store.load_manifest(tmp_path)
    assert store.load_if_matching(tmp_path, ident()) is None
    store.save(tmp_path, ident(), write_text("x"), overwrite=True)
    assert sorted(files_of(tmp_path)) == ["manifest.json", "value.txt"]
    with pytest.raises(ValueError, match="kind='layer_scores' is invalid"):
        store.load_manifest(tmp_path, "layer_scores")
    with pytest.raises(ValueError, match="^write="):
        store.save(tmp_path, ident(), lambda folder: (folder / store.MANIFEST).write_text("{}"))

    def failing(folder):
        (folder / "value.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        store.save(tmp_path, ident(), failing)
    assert (tmp_path / "value.txt").read_text() == "x"
    assert [p.name for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}.")] == []


# --- atomicity under a real kill ---------------------------------------------------------

KILLED_SAVE = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from layerif import store
    target, ident, marker = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
    def write(folder):
        (folder / "value.txt").write_text("new, half written")
        marker.write_text(str(folder))
        while True:
            time.sleep(1)
    store.save(target, ident, write)
""")


def kill_during_write(target: Path, identity: dict, marker: Path, script: str = KILLED_SAVE) -> Path:
    """Start a save in a subprocess, SIGKILL it once it wrote ``marker`` (inside ``write``, by
    default); the path the marker names (the temp folder it left)."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-c", script, str(target), json.dumps(identity),
                             str(marker)], env=env, stderr=subprocess.PIPE)
    try:
        for _ in range(1200):  # up to 2 minutes for the import on a loaded machine
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), proc.stderr.read().decode() if proc.poll() is not None else "no start"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return Path(marker.read_text())


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_killed_save_leaves_old_result_or_none(tmp_path):
    old = ident()
    store.save(tmp_path / "r", old, write_text("old result"))
    before_files, before_manifest = files_of(tmp_path / "r"), store.load_manifest(tmp_path / "r")
    leftover = kill_during_write(tmp_path / "r", old, tmp_path / "marker1")
    assert leftover.parent == tmp_path and leftover.name.startswith(".r.tmp-") and leftover.is_dir()
    assert store.load_if_matching(tmp_path / "r", old) == before_manifest
    assert files_of(tmp_path / "r") == before_files

    leftover2 = kill_during_write(tmp_path / "fresh", old, tmp_path / "marker2")
    assert leftover2.is_dir() and not (tmp_path / "fresh").exists()
    assert store.load_if_matching(tmp_path / "fresh", old) is None
    assert store.load_frame(tmp_path / "fresh", old) is None

    store.save(tmp_path / "r", old, write_text("re-run"))
    assert (tmp_path / "r" / "value.txt").read_text() == "re-run" and not leftover.exists()
    store.save(tmp_path / "fresh", old, write_text("first"))
    assert not leftover2.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "marker1", "marker2", "r"]


KILLED_BETWEEN_RENAMES = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from layerif import store
    target, ident, marker = Path(sys.argv[1]).resolve(), json.loads(sys.argv[2]), Path(sys.argv[3])
    rename = Path.rename
    def hooked(self, dst):  # block right after the old result is moved out of the way
        out = rename(self, dst)
        if Path(self).resolve() == target:
            marker.write_text(str(dst))
            while True:
                time.sleep(1)
        return out
    Path.rename = hooked
    store.save(target, ident, lambda folder: (folder / "value.txt").write_text("new"))
""")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_killed_between_renames_loses_nothing_for_good(tmp_path):
    old = ident()
    store.save(tmp_path / "r", old, write_text("old result"))
    before = files_of(tmp_path / "r")
    kill_during_write(tmp_path / "r", old, tmp_path / "marker", script=KILLED_BETWEEN_RENAMES)
    found = store.load_if_matching(tmp_path / "r", old)  # the old result, or none: never half
    assert found is None or files_of(tmp_path / "r") == before
    store.save(tmp_path / "r", old, write_text("re-run"))
    assert (tmp_path / "r" / "value.txt").read_text() == "re-run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["marker", "r"]


# --- environment -------------------------------------------------------------------------

def test_manifest_environment(tmp_path):
    store.save(tmp_path, ident(), write_text("x"))
    env = store.load_manifest(tmp_path)["environment"]
    assert env["python"] == platform.python_version()
    for name in ("torch", "transformers", "peft", "lm_eval"):
        try:
            expected = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            expected = None
        assert env[name] == expected
    root = Path(layerif.__file__).resolve().parent.parent
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        assert env["git"] is None
        return
    if Path(top).resolve() != root:
        assert env["git"] is None
        return
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert env["git"]["commit"] == head and len(head) == 40
    # untracked files count, the study's outputs (results/, book/executed/) do not
    status = subprocess.run(["git", "status", "--porcelain", "--", ".", ":(exclude)results",
                             ":(exclude)book/executed"], cwd=root, capture_output=True,
                            text=True, check=True).stdout
    assert env["git"]["dirty"] is bool(status.strip())


def test_installed_copy_inside_another_repository_has_no_git_state(tmp_path):
    try:
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not available")
    package = tmp_path / "site-packages" / "layerif"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    assert gitstate.package_checkout(package) is None


# --- result tables -----------------------------------------------------------------------

def awkward_frame() -> pd.DataFrame:
    index = pd.MultiIndex.from_tuples([("boolq", 0), ("boolq", 1), ("rte", 0), ("rte", 1)],
                                      names=["task", "seed"])
    frame = pd.DataFrame({
        "x": [0.1 + 0.2, 1 / 3, 1e-300, np.nan],
        "y": [np.inf, -np.inf, 2.0 ** 60 + 1, -1.5e308],
        "n": np.array([1, -2, 2 ** 62, 0], dtype=np.int64),
        "k": np.array([7, 8, 9, 10], dtype=np.int32),
        "s": ["plain", 'comma, "quote"', "", "line\nbreak, é"],
        "ok": [True, False, True, False],
        3: [0.5, 0.25, 0.125, 0.0625],
    }, index=index)
    frame.columns.name = "column"
    return frame


def test_frame_round_trip_is_exact(tmp_path):
    frame = awkward_frame()
    store.save_frame(tmp_path / "f", frame, ident(), allow_nonfinite=["x", "y"])
    back = store.load_frame(tmp_path / "f", ident())
    pd.testing.assert_frame_equal(back, frame, check_exact=True)
    for col in ("x", "y", 3):
        assert np.array_equal(back[col].to_numpy().view(np.uint64),
                              frame[col].to_numpy().view(np.uint64))
    assert back["x"].iloc[0] == 0.30000000000000004 and back["n"].iloc[2] == 2 ** 62
    assert back["k"].dtype == np.int32 and back["ok"].dtype == bool
    assert list(back.columns) == ["x", "y", "n", "k", "s", "ok", 3]
    assert back.index.names == ["task", "seed"] and back.columns.name == "column"
    header = (tmp_path / "f" / store.TABLE_CSV).read_text().splitlines()[0]
    assert header == "task,seed,x,y,n,k,s,ok,3"  # readable, diff-friendly

    series = pd.Series([-1.25, 0.1, 7.0], index=pd.Index([4, 5, 6], name="layer"), name="score")
    store.save_frame(tmp_path / "s", series, ident())
    pd.testing.assert_series_equal(store.load_frame(tmp_path / "s"), series, check_exact=True)
    unnamed = pd.Series(["a", None, "c"])
    store.save_frame(tmp_path / "u", unnamed, ident())
    back_u = store.load_frame(tmp_path / "u")
    assert isinstance(back_u.index, pd.RangeIndex) and back_u.name is None
    pd.testing.assert_series_equal(back_u, unnamed, check_exact=True)
    empty = frame.iloc[:0]
    store.save_frame(tmp_path / "e", empty, ident(), allow_nonfinite=True)
    pd.testing.assert_frame_equal(store.load_frame(tmp_path / "e"), empty, check_exact=True)


def test_frame_guards(tmp_path):
    frame = awkward_frame()
    assert store.load_frame(tmp_path / "f", ident()) is None
    with pytest.raises(FileNotFoundError):
        store.load_frame(tmp_path / "f")
    store.save_frame(tmp_path / "f", frame, ident(), allow_nonfinite=True)
    with pytest.raises(store.ResultMismatch, match="data.task: 'mrpc' \\(saved\\) vs 'rte'"):
        store.load_frame(tmp_path / "f", ident("rte"))
    with pytest.raises(store.ResultMismatch, match="config.alpha"):
        store.save_frame(tmp_path / "f", frame, ident(alpha=2.0), allow_nonfinite=True)
    mixed = pd.DataFrame({"v": [1.0, "a"]})
    with pytest.raises(ValueError, match="column 'v'"):
        store.save_frame(tmp_path / "m", mixed, ident())
    with pytest.raises(ValueError, match="column 'd' has dtype datetime"):
        store.save_frame(tmp_path / "m", pd.DataFrame({"d": pd.to_datetime(["2025-01-01"])}),
                         ident())
    assert not (tmp_path / "m").exists()
    store.save(tmp_path / "t", ident(), write_text("x"))
    with pytest.raises(ValueError, match="not a table"):
        store.load_frame(tmp_path / "t")


# --- MoE adapters ------------------------------------------------------------------------

def test_adapter_identity_guards_the_data_slice(tmp_path):
    model, _ = tiny_model()
    moe.attach(model, [1, 2, 1, 2], rank=2, alpha=4.0)
    ident_mrpc = moe.io.adapter_identity(model, {"task": "mrpc"})
    assert ident_mrpc["kind"] == "moe_adapter" and ident_mrpc["config"]["experts"] == [1, 2, 1, 2]
    assert ident_mrpc["config"]["dispatch"] == "auto"  # dispatch is part of the identity
    moe.save_adapter(model, tmp_path, data={"task": "mrpc"})
    assert store.load_if_matching(tmp_path, ident_mrpc)["extra"]["trainable_params"] > 0
    with pytest.raises(store.ResultMismatch, match="data.task: 'mrpc' \\(saved\\) vs 'rte'"):
        moe.save_adapter(model, tmp_path, data={"task": "rte"})
    assert sorted(files_of(tmp_path)) == ["adapter.safetensors", "manifest.json"]
