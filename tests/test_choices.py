"""choice_logliks: lm-eval's per-choice log-likelihoods from one pass per context and continuation.

Checked against stock lm-eval on the real SmolLM2-135M (seven tasks) and Gemma-3-270M, and
against an independent float64 brute force (one unbatched forward per (context, choice)).
"""
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from layerif import store
from layerif.data import Example
from layerif.evaluate import choice_logliks
from layerif.evaluate.zero_shot import PAPER_TASKS, zero_shot


def _ll_columns(frame):
    return [c for c in frame.columns if c.startswith("ll_")]


def _assert_same_as_lm_eval(model, tokenizer, named, batch_size=4, tol=1e-4):
    ours_sum, ours = zero_shot(model, tokenizer, named, batch_size=batch_size, per_example=True,
                               progress=False)
    ref_sum, ref = zero_shot(model, tokenizer, named, batch_size=batch_size, per_example=True,
                             backend="lm-eval")
    assert list(ours.index) == list(ref.index)
    cols = _ll_columns(ref)
    assert _ll_columns(ours) == cols
    a, b = ours[cols].to_numpy(), ref[cols].to_numpy()
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.nanmax(np.abs(a - b)) < tol
    for col in ("label", "n_choices", "prediction", "prediction_norm", "correct", "correct_norm"):
        assert ours[col].tolist() == ref[col].tolist(), col
    for col in ("acc", "acc_norm", "n", "chance", "majority"):
        assert ours_sum[col].tolist() == pytest.approx(ref_sum[col].tolist()), col
    return ours


@pytest.mark.slow
def test_equals_lm_eval_on_smollm2_seven_tasks(smollm2, smollm2_64):
    """float32 on the seven tasks; float64 on three, where only token ids and pairing can differ.

    In float32 the two differ by up to ~5e-4 on HellaSwag's long sums: lm-eval's own float32
    error against float64 is ~4e-4 there (ours ~1e-4), hence 1e-3 in float32 and 1e-9 in
    float64.
    """
    from layerif.data import load_task

    model, tokenizer = smollm2
    named = {t: load_task(t, "test")[:3] for t in PAPER_TASKS}
    # WinoGrande in the registry: the prompt is the sentence before the blank, each choice is
    # " <option><rest of sentence>" (full-sentence score, not lm-eval's partial score).
    wino = named["winogrande"][0]
    assert wino.text == wino.prompt + wino.choices[wino.label] and "_" not in wino.text
    tail = os.path.commonprefix([c[::-1] for c in wino.choices])[::-1]  # the rest of the sentence
    assert all(c.startswith(" ") for c in wino.choices) and len(tail) > 3
    ours = _assert_same_as_lm_eval(model, tokenizer, named, tol=1e-3)
    assert set(ours.index.get_level_values("task")) == set(PAPER_TASKS)
    model64 = smollm2_64[0]  # copy.deepcopy(model).to(torch.float64), shared
    short = {t: named[t][:2] for t in ("hellaswag", "winogrande", "arc_easy")}
    _assert_same_as_lm_eval(model64, tokenizer, short, tol=1e-9)


@pytest.mark.slow
def test_equals_lm_eval_on_gemma3_with_bos():
    from layerif import load_model
    from layerif.data import load_task

    model, tokenizer = load_model("gemma3-270m", device="cpu", dtype=torch.float64)
    assert tokenizer.encode("x")[0] == tokenizer.bos_token_id  # Gemma prepends BOS, SmolLM2 not
    named = {t: load_task(t, "test")[:2] for t in ("rte", "arc_easy")}
    _assert_same_as_lm_eval(model, tokenizer, named, batch_size=2, tol=1e-9)


def _toy_tasks():
    # Multi-token continuations (char tokenizer: one token per character), prompts of very
    # different lengths, 2 to 4 choices; and a single-token task ("a" / "b" after "Answer:").
    multi = [
        ("The sky is", ["blue", "a green field of grass", "red"], 0),
        ("2 + 2 =", ["4", "five", "twenty-two", "IV"], 0),
        ("Cats say", ["moo", "meow meow"], 1),
        ("Q: what is the capital city of France, the country in Europe?\nA:", ["Paris", "Berlin"], 0),
        ("Fire is", ["cold", "hot"], 1),
        ("A much longer context sentence that goes on and on, then asks: snow is", ["white", "black"], 0),
        ("x", ["y", "zz"], 1),
    ]
    single = [(f"Passage {'word ' * k}\nQuestion: is it?\nAnswer:", ["a", "b"], k % 2) for k in range(5)]
    return {
        "multi": [Example(str(i), p, c, y, f"{p} {c[y]}") for i, (p, c, y) in enumerate(multi)],
        "single": [Example(f"s{i}", p, c, y, p + c[y]) for i, (p, c, y) in enumerate(single)],
    }


def _brute_force(model, tokenizer, examples, sep):
    """float64, one unbatched forward of the full sequence per (context, choice)."""
    model64 = model.to(torch.float64) if model.dtype != torch.float64 else model
    out = []
    with torch.no_grad():
        for ex in examples:
            lls = []
            for choice in ex.choices:
                ids = tokenizer(ex.prompt + sep + choice, return_tensors="pt").input_ids
                n_cont = len(sep + choice)  # one token per character, no trailing-space prompts
                logp = F.log_softmax(model64(input_ids=ids).logits[0, :-1].double(), -1)
                target = ids[0, 1:]
                lls.append(float(logp[-n_cont:].gather(1, target[-n_cont:, None]).sum()))
            out.append(lls)
    return out


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float64, 1e-9)])
def test_batched_cached_path_equals_float64_brute_force(dtype, tol):
    from layerif.testing import tiny_model

    model, tokenizer = tiny_model(dtype=torch.float64)
    tasks = _toy_tasks()
    want = {"multi": _brute_force(model, tokenizer, tasks["multi"], " "),
            "single": _brute_force(model, tokenizer, tasks["single"], "")}
    model = model.to(dtype)
    model.train()  # restored after scoring
    for name, examples in tasks.items():
        for batch_size in (3, 8):  # 3 splits 7 and 5 examples unevenly
            got = choice_logliks(model, tokenizer, examples, batch_size=batch_size, progress=False)
            assert model.training
            assert list(got.index) == [ex.id for ex in examples]
            for (_, row), lls in zip(got.iterrows(), want[name]):
                assert row["n_choices"] == len(lls)
                values = [row[f"ll_{j}"] for j in range(len(lls))]
                assert values == pytest.approx(lls, abs=tol, rel=0)
                assert all(math.isnan(row[c]) for c in _ll_columns(got)[len(lls):])


def test_bfloat16_runs_close_to_float32():
    from layerif.testing import tiny_model

    model, tokenizer = tiny_model()
    examples = _toy_tasks()["multi"]
    ref = choice_logliks(model, tokenizer, examples, batch_size=3, progress=False)
    got = choice_logliks(model.to(torch.bfloat16), tokenizer, examples, batch_size=3, progress=False)
    cols = _ll_columns(ref)
    assert got[cols].dtypes.eq("float64").all()
    err = np.nanmax(np.abs(got[cols].to_numpy() - ref[cols].to_numpy()) / np.abs(ref[cols].to_numpy()))
    assert err < 0.05


def _stderr(xs):
    xs = [float(x) for x in xs]
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def test_summary_columns_by_hand_and_frame_round_trips(tiny, tmp_path):
    model, tokenizer = tiny
    summary, frame = zero_shot(model, tokenizer, _toy_tasks(), batch_size=4, per_example=True,
                               progress=False)
    assert list(frame.index.names) == ["task", "id"]
    assert list(frame.columns) == ["label", "n_choices", "ll_0", "ll_1", "ll_2", "ll_3", "prediction",
                                   "correct", "prediction_norm", "correct_norm", "margin"]
    for task, rows in frame.groupby(level="task"):
        got = summary.loc[task]
        lls = rows[_ll_columns(rows)].to_numpy()
        labels = rows["label"].to_numpy()
        gold = lls[np.arange(len(rows)), labels]
        others = np.where(np.eye(lls.shape[1], dtype=bool)[labels], np.nan, lls)
        margin = gold - np.nanmax(others, axis=1)
        assert rows["margin"].to_numpy() == pytest.approx(margin)
        assert ((margin > 0) == rows["correct"].to_numpy()).all()
        assert got["n"] == len(rows)
        assert got["acc"] == pytest.approx(rows["correct"].mean())
        assert got["acc_stderr"] == pytest.approx(_stderr(rows["correct"]))
        assert got["acc_norm"] == pytest.approx(rows["correct_norm"].mean())
        assert got["acc_norm_stderr"] == pytest.approx(_stderr(rows["correct_norm"]))
        assert got["margin"] == pytest.approx(margin.mean())
        assert got["margin_stderr"] == pytest.approx(_stderr(margin))
        assert got["chance"] == pytest.approx(np.mean([1 / n for n in rows["n_choices"]]))
        majority = max(list(labels).count(y) for y in set(labels)) / len(labels)
        assert got["majority"] == pytest.approx(majority)
    assert summary.loc["single", "chance"] == 0.5 and summary.loc["single", "majority"] == 0.6
    ident = store.identity("zero_shot", {"batch_size": 4}, "tiny", {"task": "toy", "ids": list(frame.index)})
    # NaN in ll_j: a choice the task does not have (a value, not a failed computation)
    store.save_frame(tmp_path / "f", frame, ident, allow_nonfinite=_ll_columns(frame))
    pd.testing.assert_frame_equal(store.load_frame(tmp_path / "f"), frame, check_exact=True)


def test_bad_arguments_raise_naming_the_parameter(tiny):
    model, tokenizer = tiny
    named = {"t": _toy_tasks()["multi"][:2]}
    for kwargs, name in [({"backend": "vllm"}, "backend"), ({"limit": 0}, "limit"),
                         ({"batch_size": 0}, "batch_size")]:
        with pytest.raises(ValueError, match=f"^{name}="):
            zero_shot(model, tokenizer, named, **kwargs)
    with pytest.raises(ValueError, match="^batch_size="):
        choice_logliks(model, tokenizer, named["t"], batch_size=True)


# ------------------------------------------------- non-finite models are refused, not scored
def test_evaluation_refuses_non_finite_weights_and_log_likelihoods(tiny):
    from layerif.data import load_task
    from layerif.evaluate import accuracy, perplexity

    model, tok = tiny
    examples = load_task("boolq", "test", n=2)
    tokens = torch.randint(4, 104, (2, 16), generator=torch.Generator().manual_seed(0))
    assert math.isfinite(perplexity(model, tokens, progress=False))  # the clean model scores
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    weight = r"^model\.layers\.1\.mlp\.up_proj: weights hold 1 NaN and 0 inf of 2048 values"
    for call in (lambda: perplexity(model, tokens, progress=False),
                 lambda: choice_logliks(model, tok, examples, progress=False),
                 lambda: accuracy(model, tok, examples, progress=False)):
        with pytest.raises(ValueError, match=weight):
            call()
    # finite weights whose logits overflow: the log-likelihoods are refused, naming the model
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = 0.0
        model.lm_head.weight.fill_(3e38)
    with pytest.raises(ValueError, match=r"tiny-llama-4x32-seed0: perplexity log-likelihoods "
                                         r"\(its logits\) hold \d+ NaN"):
        perplexity(model, tokens, progress=False)
    with pytest.raises(ValueError, match=r"tiny-llama-4x32-seed0: choice log-likelihoods"):
        choice_logliks(model, tok, examples, progress=False)
