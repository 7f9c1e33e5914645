"""Per-window NLL and per-example margins kept by evaluate_suite, against brute force on the
tiny Llama; their save/load round trip; evaluations saved before windows were kept."""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from layerif import stats, store
from layerif.data import Example
from layerif.evaluate.perplexity import perplexity, window_nll
from layerif.evaluate.suite import EvalConfig, Evaluation, evaluate_suite

RESULTS = Path(__file__).resolve().parents[1] / "results" / "cpu" / "pruning"


def _examples():
    specs = [("The sky is", ["blue", "green grass", "red"], 0), ("Cats say", ["moo", "meow"], 1),
             ("Fire is", ["cold", "hot", "wet"], 1), ("One, two,", ["three", "ten"], 0)]
    return [Example(str(i), p, c, y, f"{p} {c[y]}") for i, (p, c, y) in enumerate(specs)]


def _tokens(rows=5, length=17, seed=0):
    return torch.randint(4, 104, (rows, length), generator=torch.Generator().manual_seed(seed))


def test_window_nll_is_each_rows_hf_loss_times_its_tokens(tiny64):
    model, _ = tiny64
    tokens = _tokens()
    with torch.no_grad():  # HF's mean shifted loss of each row on its own
        losses = [float(model(input_ids=row[None], labels=row[None]).loss) for row in tokens]
    windows = window_nll(model, tokens, batch_size=2, progress=False)
    assert list(windows.index) == list(range(5)) and windows.index.name == "window"
    assert (windows["n_tokens"] == 16).all()
    np.testing.assert_allclose(windows["nll_sum"], np.array(losses) * 16, rtol=1e-6)
    value, again = perplexity(model, tokens, batch_size=3, progress=False, per_window=True)
    np.testing.assert_allclose(again["nll_sum"], windows["nll_sum"], rtol=1e-12)
    assert value == pytest.approx(math.exp(np.mean(losses)), rel=1e-6)
    assert perplexity(model, tokens, batch_size=8, progress=False) == pytest.approx(value, rel=1e-12)


def _gold_margins(model, tokenizer, examples):
    """Gold log-likelihood minus the best other choice's, from float64 log-softmax by hand."""
    out = []
    with torch.no_grad():
        for ex in examples:
            lls = []
            for choice in ex.choices:
                ids = tokenizer(ex.prompt + " " + choice, return_tensors="pt").input_ids
                n_cont = len(" " + choice)  # one token per character
                logp = F.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
                lls.append(float(logp[-n_cont:].gather(1, ids[0, 1:][-n_cont:, None]).sum()))
            out.append(lls[ex.label] - max(ll for j, ll in enumerate(lls) if j != ex.label))
    return out


def test_evaluate_suite_keeps_margins_and_windows(tiny64):
    model, tokenizer = tiny64
    config = EvalConfig(tasks=(), ppl_samples=5, ppl_len=17, batch_size=2)
    tokens = _tokens()
    ev = evaluate_suite(model, tokenizer, config, {"toy": _examples()}, tokens, progress=False)
    np.testing.assert_allclose(ev.examples.loc["toy", "margin"], _gold_margins(model, tokenizer, _examples()),
                               rtol=1e-6, atol=1e-8)
    pd.testing.assert_frame_equal(ev.windows, window_nll(model, tokens, 2, progress=False))
    assert ev.perplexity == pytest.approx(math.exp(ev.windows["nll_sum"].sum() / (5 * 16)), rel=1e-12)


def test_saved_evaluation_round_trip_and_paired_nll(tiny64, tmp_path):
    model, tokenizer = tiny64
    config = EvalConfig(tasks=(), ppl_samples=6, ppl_len=17, batch_size=3)
    tokens = _tokens(rows=6)
    dense = evaluate_suite(model, tokenizer, config, {"toy": _examples()}, tokens, progress=False)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.9)
    shrunk = evaluate_suite(model, tokenizer, config, {"toy": _examples()}, tokens, progress=False)
    ident = store.identity("test", {"evaluation": config.identity()}, "tiny", {})
    kept = shrunk.examples[["label", "correct", "margin"]]   # ll_2 is NaN for 2-choice examples
    store.save_frame(tmp_path, kept, ident, extra={"label": "x", **shrunk.saved_extra()})
    back = Evaluation.from_saved(store.load_frame(tmp_path), store.load_manifest(tmp_path)["extra"])
    pd.testing.assert_frame_equal(back.windows, shrunk.windows)   # exact through JSON
    assert back.perplexity == shrunk.perplexity
    res = stats.paired_nll(back.windows, dense.windows)
    per_token = (shrunk.windows["nll_sum"] - dense.windows["nll_sum"]) / 16
    assert res.estimate == pytest.approx(per_token.mean(), rel=1e-12) and res.n == 6


def test_an_evaluation_saved_before_windows_were_kept_loads_unchanged(tiny64, tmp_path):
    """A manifest written before windows were kept (``extra`` with the perplexity only) loads
    with no windows and its perplexity as saved; the config identity is what it was."""
    model, tokenizer = tiny64
    config = EvalConfig(tasks=(), ppl_samples=4, ppl_len=17, batch_size=2)
    ev = evaluate_suite(model, tokenizer, config, {"toy": _examples()}, _tokens(rows=4), progress=False)
    ident = store.identity("test", {"evaluation": config.identity()}, "tiny", {})
    legacy = {"label": "x", "perplexity": float(ev.perplexity)}     # no "windows" key
    store.save_frame(tmp_path, ev.examples[["label", "correct", "margin"]], ident, extra=legacy)
    manifest = json.loads((tmp_path / store.MANIFEST).read_text())
    frame = store.load_frame(tmp_path)
    back = Evaluation.from_saved(frame, manifest["extra"])
    assert back.windows is None and back.perplexity == ev.perplexity and back.examples is frame
    saved = manifest["config"]["evaluation"]
    assert EvalConfig(**saved).identity() == saved


def _saved_folders(limit=6):
    """Zero-shot evaluations of the committed store (each keeps its perplexity windows)."""
    manifests = sorted(m for m in RESULTS.glob("**/manifest.json") if "/ppl-only-" not in str(m))
    step = max(1, len(manifests) // limit)
    return [m.parent for m in manifests[::step][:limit]]


@pytest.mark.skipif(not RESULTS.is_dir(), reason="no committed cpu results")
@pytest.mark.parametrize("folder", _saved_folders(), ids=lambda p: str(p.relative_to(RESULTS)))
def test_committed_zero_shot_evaluations_load_with_their_windows(folder):
    manifest = json.loads((folder / store.MANIFEST).read_text())
    frame = store.load_frame(folder)
    ev = Evaluation.from_saved(frame, manifest["extra"])
    assert ev.examples is frame and ev.perplexity == manifest["extra"]["perplexity"]
    w = ev.windows
    assert len(w) == manifest["config"]["evaluation"]["ppl_samples"]
    assert np.exp(w["nll_sum"].sum() / w["n_tokens"].sum()) == pytest.approx(ev.perplexity, rel=1e-9)
    saved = manifest["config"]["evaluation"]
    assert EvalConfig(**saved).identity() == saved


@pytest.mark.skipif(not RESULTS.is_dir(), reason="no committed cpu results")
def test_perplexity_only_evaluations_load_their_windows():
    """The per-window NLL evaluations (notebook 05's ``nll`` windows) load with their windows,
    whose NLL sums give the saved perplexity."""
    folders = sorted(m.parent for m in RESULTS.glob("*/ppl-only-*/*/*/manifest.json"))
    assert folders
    for folder in folders[:: max(1, len(folders) // 4)]:
        manifest = json.loads((folder / store.MANIFEST).read_text())
        ev = Evaluation.from_saved(store.load_frame(folder), manifest["extra"])
        w = ev.windows
        assert len(w) == manifest["config"]["evaluation"]["ppl_samples"] and ev.examples.empty
        assert np.exp(w["nll_sum"].sum() / w["n_tokens"].sum()) == pytest.approx(ev.perplexity, rel=1e-9)
