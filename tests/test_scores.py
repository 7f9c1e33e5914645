"""layer_scores end to end against a brute-force DataInf; LayerScores views and persistence."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_gradients import DEVICE, brute_force, lora_tiny, on_device
from test_influence import loop_datainf, loop_exact

from layerif.gradients import find_units
from layerif.scores import LayerScores, ScoreConfig, aggregate_values, layer_scores
from layerif.store import ResultMismatch

TRAIN = ["The cat sat on the mat.", "Hi.", "Dogs bark at night", "a b c d e f g",
         "Influence, per block!", "ok then", "Short", "One more training sentence here."]
VAL = ["The dog sat.", "Validation text, longer than the other one."]


pytestmark = pytest.mark.usefixtures("one_thread")


def reference(model, tok, target, method="datainf", include_pads=False, unit="tensor",
              max_length=48, damping=0.1):
    """Per-unit influence [n_units, n] from one backward per example and Python loops."""
    units = find_units(model, target)
    params = [u.param for u in units]
    g = brute_force(model, tok, TRAIN, params, max_length, include_pads)
    v = brute_force(model, tok, VAL, params, max_length, include_pads)
    if method == "hessian_free":
        return np.stack([-(gu.numpy() @ vu.numpy().sum(0)) for gu, vu in zip(g, v)])
    if unit == "tensor":
        return (loop_exact if method == "exact" else loop_datainf)(g, v, damping)
    # one Hessian block per layer: DataInf on the concatenated block gradient, then the
    # block's h split back into per-unit shares <h_u, g_ku>
    out = np.zeros((len(units), len(TRAIN)))
    for layer in sorted({u.layer for u in units}):
        idx = [k for k, u in enumerate(units) if u.layer == layer]
        gb = torch.cat([g[k] for k in idx], dim=1).numpy()
        vb = torch.cat([v[k] for k in idx], dim=1).numpy().sum(0)
        n, d = gb.shape
        lam = damping * sum(float(gi @ gi) for gi in gb) / (n * d)
        h = sum(vb - float(vb @ gi) / (lam + float(gi @ gi)) * gi for gi in gb) / (n * lam)
        start = 0
        for k in idx:
            hk = h[start:start + g[k].shape[1]]
            start += g[k].shape[1]
            out[k] = -(g[k].numpy() @ hk)
    return out


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.abs(a - b).max() / np.abs(b).max()


def score(model, tok, **kw):
    config = ScoreConfig(device=str(DEVICE), batch_size=3, max_length=48, **kw)
    return layer_scores(model, tok, TRAIN, VAL, config, progress=False)


@pytest.mark.parametrize("target", ["weights", "lora"])
@pytest.mark.parametrize("include_pads", [False, True])
def test_matches_brute_force_datainf(tiny64, target, include_pads):
    model, tok = lora_tiny(tiny64) if target == "lora" else on_device(tiny64)
    ref = reference(model, tok, target, include_pads=include_pads)
    for storage in ("memory", "stream"):
        got = score(model, tok, target=target, include_pads=include_pads, storage=storage)
        assert got.info["storage"] == storage
        assert rel_err(got.values, ref) < 1e-8, storage


@pytest.mark.parametrize("method", ["hessian_free", "exact"])
def test_other_methods_match_brute_force(tiny64, method):
    model, tok = on_device(tiny64)
    ref = reference(model, tok, "weights", method=method)
    storages = ("memory", "stream") if method == "hessian_free" else ("memory",)
    for storage in storages:
        assert rel_err(score(model, tok, method=method, storage=storage).values, ref) < 1e-8


def test_block_hessian_units_match_brute_force(tiny64):
    model, tok = on_device(tiny64)
    ref = reference(model, tok, "weights", unit="block")
    for storage in ("memory", "stream"):
        got = score(model, tok, unit="block", storage=storage)
        assert rel_err(got.values, ref) < 1e-8
    assert rel_err(score(model, tok, unit="block", method="exact").values, ref) > 1e-6


def test_passes_do_not_grow_with_depth():
    from layerif.testing import tiny_model

    calls = {}
    for n_layers in (2, 6):
        model, tok = tiny_model(n_layers=n_layers)
        count = [0]
        model.register_forward_hook(lambda *a: count.__setitem__(0, count[0] + 1))
        got = score(model, tok, storage="stream")
        assert got.info["passes"] == 4
        calls[n_layers] = count[0]
    # one validation pass (1 batch) and three training passes (3 batches each)
    assert calls[2] == calls[6] == 1 + 3 * 3


def test_storage_auto_follows_budget_and_exact_refuses_streaming(tiny):
    model, tok = tiny
    in_memory, streamed = score(model, tok), score(model, tok, memory_budget_gb=1e-6)
    assert in_memory.info["storage"] == "memory" and streamed.info["storage"] == "stream"
    assert in_memory.info["passes"] == 2 and streamed.info["passes"] == 4
    assert rel_err(streamed.values, in_memory.values) < 1e-4  # float32 model and maths
    with pytest.raises(ValueError, match="method='exact' needs per-example gradients"):
        score(model, tok, method="exact", memory_budget_gb=1e-6)


def test_fresh_lora_is_attached_then_removed(tiny64):
    model, tok = tiny64
    got = score(model, tok, target="lora", lora_rank=2)
    assert got.info["fresh_lora"] and not any("lora" in n for n, _ in model.named_modules())
    units = got.units
    assert list(units["tensor"][:2]) == ["lora_A", "lora_B"] and units["numel"][0] == 2 * 32
    # peft starts B at zero: A's gradients, hence its influence, are exactly zero
    is_a = torch.tensor((units["tensor"] == "lora_A").tolist())
    assert (got.values[is_a] == 0).all() and (got.values[~is_a] != 0).any()


def test_progress_false_is_silent(tiny, capsys):
    model, tok = tiny
    score(model, tok, storage="stream")
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def hand_scores():
    """Two blocks; block 0 has units (q, LoRA-like pair on v), block 1 one unit; 4 examples."""
    units = pd.DataFrame({
        "layer": [0, 0, 0, 1], "path": ["m.0", "m.0", "m.0", "m.1"],
        "module": ["q", "v", "v", "q"], "tensor": ["weight", "lora_A", "lora_B", "weight"],
        "name": ["m.0.q.weight", "m.0.v.A", "m.0.v.B", "m.1.q.weight"], "numel": [4, 2, 2, 4],
    }).rename_axis("unit")
    values = torch.tensor([[-1.0, 2.0, -3.0, 0.5],
                           [0.5, -1.0, 1.0, 0.0],
                           [-0.5, 0.0, 1.0, -2.0],
                           [3.0, -4.0, 1.0, -1.0]], dtype=torch.float64)
    return LayerScores(values=values, units=units, train_ids=["a", "b", "c", "d"],
                       val_ids=["x"], config=ScoreConfig(device="cpu"), model_id="hand",
                       task="fixture")


def test_aggregations_by_hand():
    s = hand_scores()
    # block 0 per example: [-1, 1, -1, -1.5]; block 1: [3, -4, 1, -1]
    block = s.per_block()
    assert block.index.name == "layer" and list(block.columns) == ["a", "b", "c", "d"]
    np.testing.assert_allclose(block.to_numpy(), [[-1, 1, -1, -1.5], [3, -4, 1, -1]])
    np.testing.assert_allclose(s.aggregate("positive"), [-3.5, -5])
    np.testing.assert_allclose(s.aggregate("all"), [-2.5, -1])
    np.testing.assert_allclose(s.aggregate("top", 0.25), [-1.5, -4])  # 1 of 4 examples
    np.testing.assert_allclose(s.aggregate("top", 0.5), [-2.5, -5])
    np.testing.assert_allclose(s.aggregate("top", 1.0), s.aggregate("all"))
    assert s.aggregate().index.name == "layer" and s.aggregate().name == "score"
    table = s.table()
    assert list(table["path"]) == ["m.0", "m.1"] and list(table["n_params"]) == [8, 4]
    np.testing.assert_allclose(table["positive"], [-3.5, -5])
    assert list(table["n_helpful"]) == [3, 2]
    per_matrix = s.per_matrix("all")
    assert list(per_matrix.columns) == ["path", "q", "v"] and per_matrix.index.name == "layer"
    np.testing.assert_allclose(per_matrix["q"], [-1.5, -1])
    np.testing.assert_allclose(per_matrix.loc[0, "v"], -1.0)  # A + B of v summed first
    assert np.isnan(per_matrix.loc[1, "v"])
    with pytest.raises(ValueError, match="mode='best'"):
        s.aggregate("best")
    with pytest.raises(ValueError, match="top_fraction=0"):
        aggregate_values(s.values, "top", 0)


def test_save_load_roundtrip_and_overwrite_guard(tmp_path):
    s = hand_scores()
    s.save(tmp_path / "r")
    back = LayerScores.load(tmp_path / "r")
    assert torch.equal(back.values, s.values) and back.config == s.config
    assert back.train_ids == s.train_ids and back.task == "fixture" and back.model_id == "hand"
    pd.testing.assert_frame_equal(back.units, s.units)
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["kind"] == "layer_scores" and manifest["data"]["val_ids"] == ["x"]
    s.save(tmp_path / "r")  # same config: a re-run replaces it
    other = hand_scores()
    other.config = ScoreConfig(device="cpu", damping=0.5)
    with pytest.raises(ResultMismatch, match=r"config.damping: 0.1 \(saved\) vs 0.5 \(given\)"):
        other.save(tmp_path / "r")
    other.save(tmp_path / "r", overwrite=True)
    assert LayerScores.load(tmp_path / "r").config.damping == 0.5


def test_saved_real_scores_roundtrip(tiny, tmp_path):
    model, tok = tiny
    s = score(model, tok, modules=("q_proj", "v_proj"), dtype=torch.float64)
    s.save(tmp_path)
    back = LayerScores.load(tmp_path)
    assert back.config.modules == ("q_proj", "v_proj") and back.config.dtype == torch.float64
    pd.testing.assert_series_equal(back.aggregate(), s.aggregate())
    assert list(back.table()["path"]) == [f"model.layers.{i}" for i in range(4)]


def test_config_validation_and_presets():
    for kw, name in [({"method": "tracin"}, "method"), ({"damping": 0.0}, "damping"),
                     ({"target": "bias"}, "target"), ({"n_train": 0}, "n_train"),
                     ({"storage": "disk"}, "storage"), ({"unit": "row"}, "unit"),
                     ({"modules": ()}, "modules"), ({"dtype": torch.float16}, "dtype"),
                     ({"max_length": 1}, "max_length"), ({"device": "tpu?"}, "device")]:
        with pytest.raises(ValueError, match=name):
            ScoreConfig(**kw)
    paper = ScoreConfig.paper()
    assert (paper.n_train, paper.n_val, paper.target, paper.modules, paper.max_length) == (
        300, 50, "weights", "attention", 128)
    assert ScoreConfig.preset("smoke").n_train < paper.n_train
    assert ScoreConfig.PRESETS == ("smoke", "paper")  # the book's sizes: params/*.yaml
    with pytest.raises(ValueError, match="preset='cpu' is unknown for ScoreConfig"):
        ScoreConfig.preset("cpu")
    assert ScoreConfig.from_dict(paper.to_dict()) == paper


def test_bools_strings_and_unavailable_devices_are_refused_at_once(tiny):
    # Before: n_train=True was taken as 1; a str was scored character by character.
    for kw in ({"n_train": True}, {"n_val": False}, {"batch_size": True}, {"damping": True},
               {"seed": False}):
        (name, value), = kw.items()
        with pytest.raises(ValueError, match=rf"{name}={value!r} is invalid: .*a bool is not"):
            ScoreConfig(**kw)
    assert ScoreConfig(include_pads=True).include_pads is True  # a bool field takes bools
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda' is unavailable"):
            ScoreConfig(device="cuda")
    model, tok = tiny
    config = ScoreConfig(device="cpu", n_train=2, n_val=1)
    for train, val, name in (("hello world", VAL, "train_examples"),
                             (TRAIN, "hello", "val_examples")):
        with pytest.raises(ValueError, match=rf"{name}='.*' is invalid: .*not one string"):
            layer_scores(model, tok, train, val, config, progress=False)
    with pytest.raises(ValueError, match=r"train_examples=\[\] is invalid"):
        layer_scores(model, tok, [], VAL, config, progress=False)


def test_scores_saved_on_a_gpu_load_where_there_is_none(tmp_path):
    import json

    s = hand_scores()
    path = s.save(tmp_path / "s")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["extra"]["runtime"]["device"] = "cuda:7"  # as a GPU run records it
    (path / "manifest.json").write_text(json.dumps(manifest))
    loaded = LayerScores.load(path)
    assert loaded.config.device == ("cuda:7" if torch.cuda.device_count() > 7 else "auto")
    assert torch.equal(loaded.values, s.values)


def test_first_examples_and_ids_are_used(tiny):
    from types import SimpleNamespace

    model, tok = tiny
    train = [SimpleNamespace(id=f"t{i}", text=t) for i, t in enumerate(TRAIN)]
    config = ScoreConfig(device="cpu", n_train=5, n_val=1, batch_size=2)
    s = layer_scores(model, tok, train, VAL, config, task="toy", progress=False)
    assert s.train_ids == ["t0", "t1", "t2", "t3", "t4"] and s.val_ids == ["0"]
    assert s.values.shape == (16, 5) and s.task == "toy"


@pytest.mark.slow
def test_smollm2_lora_scores_match_brute_force(smollm2):
    import copy

    from layerif.gradients import attached_lora

    model, tok = smollm2
    model = copy.deepcopy(model).double()  # float64 so that 1e-8 is meaningful
    config = ScoreConfig(device="cpu", target="lora", modules=("q_proj",), lora_rank=2,
                         max_length=24, batch_size=4)
    with attached_lora(model, ("q_proj",), rank=2, alpha=4):
        with torch.no_grad():  # a non-zero B, as after training
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
        got = layer_scores(model, tok, TRAIN[:6], VAL, config, progress=False)
        units = find_units(model, "lora", ("q_proj",))
        params = [u.param for u in units]
        g = brute_force(model, tok, TRAIN[:6], params, 24)
        v = brute_force(model, tok, VAL, params, 24)
    assert not got.info["fresh_lora"] and len(got.table()) == 30
    assert list(got.table()["path"]) == [f"model.layers.{i}" for i in range(30)]
    assert rel_err(got.values, loop_datainf(g, v)) < 1e-8
