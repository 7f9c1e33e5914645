"""The dtype a model is loaded in is part of a result's identity (issue 23): a float32
result's identity is what it was before the key existed (every committed result is float32),
any other dtype adds ``model_dtype``, and a result of one dtype never answers for another."""
import json

import pandas as pd
import pytest
import torch

import layerif
from layerif import ScoreConfig, store
from layerif.evaluate import EvalConfig
from layerif.experiments import allocation, pruning, scoring
from layerif.prune import PruneConfig
from layerif.testing import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = ("toy", {"alpha": 1.0}, "m", {"task": "t", "ids": ["a", "b"]})
#: The identity as written before ``dtype`` existed (an independent reference).
PLAIN = {"kind": "toy", "config": {"alpha": 1.0}, "model_id": "m",
         "data": {"task": "t", "ids": ["a", "b"]}, "layerif_version": layerif.__version__}


@pytest.mark.parametrize("dtype", [None, torch.float32, "float32", "torch.float32"])
def test_float32_identity_is_unchanged(dtype):
    got = store.identity(*ARGS, dtype=dtype)
    assert json.dumps(got) == json.dumps(store.identity(*ARGS)) == json.dumps(PLAIN)


@pytest.mark.parametrize("dtype, name", [(torch.bfloat16, "bfloat16"), ("bfloat16", "bfloat16"),
                                         ("torch.bfloat16", "bfloat16"), (torch.float16, "float16")])
def test_other_dtypes_add_model_dtype_only(dtype, name):
    got = store.identity(*ARGS, dtype=dtype)
    assert got == {**PLAIN, "model_dtype": name}
    assert store.differences(PLAIN, got) == [f"model_dtype: <absent> (saved) vs {name!r} (given)"]


@pytest.mark.parametrize("bad", ["int8", "bf16", 3, torch.int64])
def test_bad_dtype_is_one_line_error(bad):
    with pytest.raises(ValueError, match=r"^dtype=") as err:
        store.identity(*ARGS, dtype=bad)
    assert "\n" not in str(err.value)


def table(value):
    return lambda: pd.DataFrame({"v": [value]}, index=pd.Index(["a"], name="k"))


@pytest.mark.parametrize("first, second", [(None, "bfloat16"), ("bfloat16", "float32")])
def test_a_result_of_one_dtype_does_not_answer_for_another(tmp_path, first, second):
    folder = tmp_path / "r"
    saved = store.cached(folder, store.identity(*ARGS, dtype=first), table(1.0))
    manifest = (folder / store.MANIFEST).read_bytes()
    assert json.loads(manifest).get("model_dtype") == store.identity_dtype(first)
    other = store.identity(*ARGS, dtype=second)
    with pytest.raises(store.ResultMismatch, match="model_dtype"):
        store.cached(folder, other, table(2.0))
    with pytest.raises(store.ResultMismatch, match="model_dtype"):
        store.save_frame(folder, table(2.0)(), other)
    with store.read_only("00_nb"), pytest.raises(store.MissingResult, match="model_dtype"):
        store.cached(folder, other, table(2.0))
    assert (folder / store.MANIFEST).read_bytes() == manifest  # nothing overwritten
    again = store.cached(folder, store.identity(*ARGS, dtype=first), table(3.0))
    pd.testing.assert_frame_equal(again, saved)  # the same dtype still loads it
    assert store.saved_identity(json.loads(manifest)) == store.identity(*ARGS, dtype=first)


def test_save_takes_the_optional_key_and_no_other(tmp_path):
    ident = store.identity(*ARGS, dtype="float16")
    store.save_frame(tmp_path / "ok", table(1.0)(), ident)
    assert store.load_if_matching(tmp_path / "ok", ident)["model_dtype"] == "float16"
    with pytest.raises(ValueError, match="^ident="):
        store.save_frame(tmp_path / "bad", table(1.0)(), {**ident, "other": 1})


def test_pruning_run_identity_carries_the_load_dtype(tmp_path, save_tiny):
    path = str(save_tiny(n_layers=2))

    def ident(**load_kwargs):
        run = pruning.PruningRun(tmp_path, path, PruneConfig(n_samples=2, seq_len=32),
                                 EvalConfig(tasks=("boolq",), n_examples=2, ppl_samples=2,
                                            ppl_len=16), device="cpu", progress=False,
                                 load_kwargs=load_kwargs)
        return run.identity(pruning.Setting("dense"), None, None)

    plain = ident()
    assert "model_dtype" not in plain and set(plain) == set(store.IDENTITY_KEYS)
    assert ident(dtype="float32") == ident(dtype=torch.float32) == plain
    assert ident(dtype="bfloat16") == {**plain, "model_dtype": "bfloat16"}


def test_model_stats_take_the_model_dtype(tmp_path):
    model, _ = tiny_model(n_layers=2)
    alpha = allocation.block_alpha(model, tmp_path)
    folder = next(tmp_path.rglob(store.MANIFEST)).parent
    assert "model_dtype" not in json.loads((folder / store.MANIFEST).read_text())
    with pytest.raises(store.ResultMismatch, match="model_dtype: <absent> .* 'bfloat16'"):
        allocation.block_alpha(model.to(torch.bfloat16), tmp_path)
    pd.testing.assert_series_equal(allocation.block_alpha(model.to(torch.float32), tmp_path), alpha)


def test_scores_are_saved_and_found_under_the_load_dtype(tmp_path, save_tiny):
    path = str(save_tiny(n_layers=2))
    config = ScoreConfig(n_train=3, n_val=2, max_length=16, batch_size=4, device="cpu")

    def score(**load_kwargs):
        return scoring.score_tasks(path, ["mrpc"], config, tmp_path, methods=("datainf",),
                                   template=None, progress=False, load_kwargs=load_kwargs)

    first = score(dtype="bfloat16")
    assert set(first["status"]) == {"computed"}
    saved = json.loads((scoring.scores_dir(tmp_path, path, "mrpc", "datainf")
                        / store.MANIFEST).read_text())
    assert saved["model_dtype"] == "bfloat16"
    assert scoring.load_scores(tmp_path, path, "mrpc", "datainf").model_dtype == "bfloat16"
    assert set(score(dtype=torch.bfloat16)["status"]) == {"loaded"}
    with pytest.raises(store.ResultMismatch, match="model_dtype: 'bfloat16' .* <absent>"):
        score()


def test_an_adapter_identity_carries_the_base_models_dtype():
    from layerif import moe
    from layerif.moe.io import adapter_identity

    float32 = moe.attach(tiny_model()[0], [1, 2, 1, 2])
    bf16 = moe.attach(tiny_model(dtype=torch.bfloat16)[0], [1, 2, 1, 2])
    plain = adapter_identity(float32, {"task": "sst2"})
    assert "model_dtype" not in plain and set(plain) == set(store.IDENTITY_KEYS)
    assert adapter_identity(bf16, {"task": "sst2"}) == {**plain, "model_dtype": "bfloat16"}
