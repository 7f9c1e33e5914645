"""What a run read or computed from the store, and the cold cost its manifests record."""
import json

import pandas as pd

from layerif import store, usage

IDENT = store.identity("toy", {}, None, {"n": 1})


def test_manifest_seconds_sums_the_entries_named_seconds():
    assert usage.manifest_seconds({"extra": {"prune_seconds": 1.5, "eval_seconds": 2, "n": 7}}) == 3.5
    assert usage.manifest_seconds({"extra": {"train_seconds": None, "label": "x"}}) is None
    assert usage.manifest_seconds({}) is None


def test_nothing_is_written_unless_a_log_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv(usage.LOG_ENV, raising=False)
    store.cached(tmp_path / "r", IDENT, lambda: pd.DataFrame({"v": [1.0]}))
    assert list(tmp_path.glob("*.jsonl")) == []


def test_the_store_notes_computed_and_loaded_results(tmp_path, monkeypatch):
    monkeypatch.delenv(usage.LOG_ENV, raising=False)
    store.save_frame(tmp_path / "res" / "a", pd.DataFrame({"v": [1.0]}), IDENT,
                     extra={"train_seconds": 10.0, "eval_seconds": 5.0})
    with usage.recording(tmp_path / "uses.jsonl") as log:
        store.cached(tmp_path / "res" / "a", IDENT, lambda: 1 / 0)
        store.cached(tmp_path / "res" / "b", IDENT, lambda: pd.DataFrame({"v": [2.0]}),
                     extra={"label": "b"})
        store.cached(tmp_path / "res" / "b", IDENT, lambda: 1 / 0)
    assert usage.LOG_ENV not in __import__("os").environ
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(x["path"].rsplit("/", 1)[1], x["computed"]) for x in lines] == [
        ("a", False), ("b", True), ("b", False)]
    used = usage.read(log, tmp_path)
    b_secs = store.load_manifest(tmp_path / "res" / "b")["extra"]["compute_seconds"]
    assert store.load_manifest(tmp_path / "res" / "b")["extra"]["label"] == "b"
    assert used == {"res/a": {"seconds": 15.0, "computed": False},
                    "res/b": {"seconds": b_secs, "computed": True}}
    assert usage.cold_cost(used) == {"cold_s": round(15.0 + b_secs, 1), "results": 2,
                                     "computed": 1, "untimed": 0}


def test_a_result_with_its_own_seconds_gets_no_second_clock(tmp_path):
    store.cached(tmp_path / "r", IDENT, lambda: pd.DataFrame({"v": [1.0]}),
                 extra={"prune_seconds": 3.0})
    assert store.load_manifest(tmp_path / "r")["extra"] == {"prune_seconds": 3.0}


def test_untimed_results_make_the_cold_cost_a_lower_bound():
    used = {"x": {"seconds": None, "computed": False}, "y": {"seconds": 60.0, "computed": False}}
    assert usage.cold_cost(used) == {"cold_s": 60.0, "results": 2, "computed": 0, "untimed": 1}


def test_recording_restores_an_outer_log(tmp_path, monkeypatch):
    monkeypatch.setenv(usage.LOG_ENV, str(tmp_path / "outer.jsonl"))
    with usage.recording(tmp_path / "inner.jsonl"):
        pass
    assert __import__("os").environ[usage.LOG_ENV] == str(tmp_path / "outer.jsonl")


def test_a_result_computed_inside_another_is_timed_once(tmp_path):
    """The outer result's compute_seconds leave out the inner result's computation, so the
    seconds of the two add up to the time spent, not more."""
    import time

    def inner():
        time.sleep(0.6)
        return pd.DataFrame({"v": [1.0]})

    def outer():
        store.cached(tmp_path / "inner", IDENT, inner)
        time.sleep(0.05)
        return pd.DataFrame({"v": [2.0]})

    start = time.perf_counter()
    store.cached(tmp_path / "outer", IDENT, outer)
    spent = time.perf_counter() - start
    secs = {n: store.load_manifest(tmp_path / n)["extra"]["compute_seconds"] for n in ("inner", "outer")}
    assert secs["inner"] >= 0.6 and 0.05 <= secs["outer"] < 0.6  # counted twice: >= 0.65
    assert secs["inner"] + secs["outer"] <= spent + 0.02
    value, own = usage.timed(lambda: 7)
    assert value == 7 and 0 <= own < 0.05
