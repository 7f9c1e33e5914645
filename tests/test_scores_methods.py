"""layer_scores(methods=...): several influence variants from shared gradient passes."""
import pytest
import torch
from test_gradients import DEVICE, lora_tiny, on_device
from test_scores import TRAIN, VAL, reference, rel_err, score

from layerif.scores import ScoreConfig, layer_scores

pytestmark = pytest.mark.usefixtures("one_thread")


def separate(model, tok, methods, **kw):
    """Each method from its own layer_scores call."""
    return {m: score(model, tok, method=m, **kw) for m in methods}


@pytest.mark.parametrize("target", ["weights", "lora"])
@pytest.mark.parametrize("unit", ["tensor", "block"])
@pytest.mark.parametrize("storage, methods, shared_passes, separate_passes", [
    ("memory", ("exact", "datainf", "hessian_free"), 2, 6),
    ("memory", ("hessian_free", "datainf"), 2, 4),
    ("stream", ("datainf", "hessian_free"), 4, 6),
    ("stream", ("hessian_free",), 2, 2),
])
def test_shared_passes_equal_separate_calls(tiny64, target, unit, storage, methods,
                                            shared_passes, separate_passes):
    model, tok = lora_tiny(tiny64) if target == "lora" else on_device(tiny64)
    kw = dict(target=target, unit=unit, storage=storage)
    alone = separate(model, tok, methods, **kw)
    config = ScoreConfig(device=str(DEVICE), batch_size=3, max_length=48, method="datainf", **kw)
    shared = layer_scores(model, tok, TRAIN, VAL, config, progress=False, methods=methods)
    assert list(shared) == list(methods)
    for m in methods:
        got, ref = shared[m], alone[m]
        assert got.config == config.replace(method=m)
        assert rel_err(got.values, ref.values) < 1e-10, m
        assert got.info["storage"] == storage
        assert got.info["passes"] == shared_passes
        assert got.info["shared_with"] == list(methods)
    assert sum(r.info["passes"] for r in alone.values()) == separate_passes


def test_without_methods_returns_one_result(tiny64):
    model, tok = on_device(tiny64)
    got = score(model, tok, method="hessian_free", storage="stream")
    assert got.config.method == "hessian_free" and "shared_with" not in got.info


def test_exact_refuses_streaming_in_shared_call(tiny64):
    model, tok = on_device(tiny64)
    config = ScoreConfig(storage="stream", max_length=48)
    with pytest.raises(ValueError, match="method='exact' needs per-example gradients"):
        layer_scores(model, tok, TRAIN, VAL, config, progress=False,
                     methods=("datainf", "exact"))


@pytest.mark.parametrize("methods", [(), ["datainf", "datainf"], ("datainf", "tracin"),
                                     "datainf", (1,)])
def test_bad_methods_raise(tiny, methods):
    model, tok = tiny
    with pytest.raises(ValueError, match=r"^methods=") as err:
        layer_scores(model, tok, TRAIN, VAL, progress=False, methods=methods)
    assert "\n" not in str(err.value)


def test_shared_stream_matches_brute_force(tiny64):
    """Both streamed variants of one shared call against one backward per example."""
    model, tok = on_device(tiny64)
    config = ScoreConfig(storage="stream", batch_size=3, max_length=48)
    shared = layer_scores(model, tok, TRAIN, VAL, config, progress=False,
                          methods=("datainf", "hessian_free"))
    for m in ("datainf", "hessian_free"):
        ref = torch.as_tensor(reference(model, tok, "weights", m))
        assert rel_err(shared[m].values, ref) < 1e-8, m
