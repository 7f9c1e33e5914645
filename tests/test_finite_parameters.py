"""The finiteness check of a model's weights: read once per evaluation, still run by each
evaluation function called alone, exact where a parameter's sum overflows."""
import re

import pytest
import torch
from torch import nn

import layerif.models as models
from layerif.data import Example
from layerif.evaluate import choice_logliks, perplexity, zero_shot
from layerif.evaluate.suite import EvalConfig, evaluate_suite
from layerif.models import check_finite_parameters, finite_parameters

NAN_AT = "model.layers.1.mlp.up_proj"


def _examples():
    specs = [("The sky is", ["blue", "green grass"], 0), ("Fire is", ["cold", "hot", "wet"], 1)]
    return [Example(str(i), p, c, y, f"{p} {c[y]}") for i, (p, c, y) in enumerate(specs)]


def _tokens():
    return torch.randint(4, 104, (2, 9), generator=torch.Generator().manual_seed(0))


def _config():
    return EvalConfig(tasks=(), ppl_samples=2, ppl_len=9, batch_size=2)


@pytest.fixture
def probed(tiny, monkeypatch):
    """The tiny model with an unused parameter whose sum overflows (finite entries), so that
    every scan of the weights reads it in full: ``reads`` counts the scans."""
    model, tok = tiny
    model.register_parameter("probe", nn.Parameter(torch.full((2,), 3e38), requires_grad=False))
    reads = []
    exact = models.check_finite

    def counting(tensor, where, what="weights"):
        reads.extend([where] if where == "probe" else [])
        return exact(tensor, where, what)

    monkeypatch.setattr(models, "check_finite", counting)
    return model, tok, reads


def test_one_evaluation_reads_the_weights_once(probed):
    model, tok, reads = probed
    tasks = {"a": _examples(), "b": _examples(), "c": _examples()}
    # before: zero_shot read them once per task, evaluate_suite once per task + perplexity
    for call in (lambda: choice_logliks(model, tok, _examples(), progress=False),
                 lambda: perplexity(model, _tokens(), progress=False),
                 lambda: zero_shot(model, tok, tasks, progress=False),
                 lambda: evaluate_suite(model, tok, _config(), tasks, _tokens(), progress=False)):
        reads.clear()
        call()
        assert reads == ["probe"]
    reads.clear()
    evaluate_suite(model, tok, _config(), tasks, _tokens(), progress=False)
    evaluate_suite(model, tok, _config(), tasks, _tokens(), progress=False)
    assert reads == ["probe", "probe"]   # once per call: nothing remembered between calls


def test_blocks_nest_and_forget_the_model_after_the_outermost(probed):
    model, _, reads = probed
    with finite_parameters(model):
        with finite_parameters(model):
            check_finite_parameters(model)
        check_finite_parameters(model)
    assert reads == ["probe"]
    check_finite_parameters(model)
    assert reads == ["probe", "probe"]
    with pytest.raises(RuntimeError, match="boom"):
        with finite_parameters(model):
            raise RuntimeError("boom")
    check_finite_parameters(model)
    assert reads == ["probe"] * 4


def test_a_nan_weight_is_named_by_every_evaluation_called_alone(tiny):
    model, tok = tiny
    with torch.no_grad():
        model.get_submodule(NAN_AT).weight[3, 2] = float("nan")
    message = rf"^{re.escape(NAN_AT)}: weights hold 1 NaN and 0 inf of 2048 values"
    tasks = {"a": _examples(), "b": _examples()}
    for call in (lambda: evaluate_suite(model, tok, _config(), tasks, _tokens(), progress=False),
                 lambda: zero_shot(model, tok, tasks, progress=False),
                 lambda: perplexity(model, _tokens(), progress=False),
                 lambda: choice_logliks(model, tok, _examples(), progress=False)):
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(ValueError, match=message):   # the check on entering a block
        with finite_parameters(model):
            pass


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_the_sum_shortcut_misses_no_non_finite_entry(value):
    # Reference: an elementwise scan of every parameter, in module order.
    layer = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with torch.no_grad():
        layer[0].weight.fill_(3e38)           # finite, its sum overflows: read exactly, passes
        layer[1].bias[1] = value
        if value == float("inf"):
            layer[1].weight[0, 0] = float("-inf")   # inf + -inf: a NaN sum, still caught first
    first = next(n for n, p in layer.named_parameters() if not torch.isfinite(p).all())
    module, _, kind = first.rpartition(".")
    with pytest.raises(ValueError, match=rf"^{module}: ") as err:
        check_finite_parameters(layer)
    counted = dict(layer.named_parameters())[first]
    assert (f"hold {int(counted.isnan().sum())} NaN and {int(counted.isinf().sum())} inf"
            in str(err.value))
    assert kind in ("weight", "bias")
    with torch.no_grad():
        for p in layer.parameters():
            p.nan_to_num_(posinf=1.0, neginf=-1.0)
    check_finite_parameters(layer)   # finite again (the overflowing sum included): passes


def test_a_bfloat16_model_whose_sum_overflows_passes(tiny):
    model, _ = tiny
    model.to(torch.bfloat16)
    with torch.no_grad():
        model.lm_head.weight.fill_(3e38)   # bf16 reaches 3.4e38: finite entries, an inf sum
    assert torch.isfinite(model.lm_head.weight).all() and not torch.isfinite(model.lm_head.weight.sum())
    check_finite_parameters(model)
