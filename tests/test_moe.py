"""LoRA-MoE layer, attach from an allocation, balance loss, save/load.

References are written by hand in float64: a plain LoRA forward, a per-token brute-force
mixture, the balance formula on a hand-made routing, parameter counts from the shapes.
"""
import copy
import json

import pandas as pd
import pytest
import torch
from torch import nn

from layerif import moe
from layerif.moe import LoRAMoELinear, attach, moe_layers, switch_balance_loss
from layerif.store import ProvenanceError

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _randomize(layer: LoRAMoELinear, seed: int = 0):
    """Give B (zero at init) and the router random values, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.experts_B.copy_(torch.randn(layer.experts_B.shape, generator=g, dtype=layer.experts_B.dtype))
        if layer.router is not None:
            layer.router.weight.copy_(torch.randn(layer.router.weight.shape, generator=g,
                                                  dtype=layer.router.weight.dtype))


def _layer(n_experts, top_k, d_in=6, d_out=5, rank=3, alpha=6.0, seed=0, dispatch="auto"):
    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out, dtype=torch.float64)
    layer = LoRAMoELinear(base, n_experts, top_k, rank=rank, alpha=alpha, dropout=0.0, dispatch=dispatch)
    _randomize(layer, seed)
    return layer


def _brute_force(layer: LoRAMoELinear, x: torch.Tensor, base=None) -> torch.Tensor:
    """Per token: softmax over all experts, keep top-k, renormalise, sum their LoRAs."""
    W, b = layer.base_layer.weight, layer.base_layer.bias
    base = base or (lambda t: W @ t + b)
    A, B, s = layer.experts_A, layer.experts_B, layer.alpha / layer.rank
    rows = []
    for t in x.reshape(-1, x.shape[-1]):
        y = base(t)
        logits = torch.stack([layer.router.weight[e] @ t for e in range(layer.n_experts)])
        p = torch.exp(logits - logits.max()) / torch.exp(logits - logits.max()).sum()
        chosen = sorted(range(layer.n_experts), key=lambda e: -float(p[e].detach()))[: layer.top_k]
        z = sum(p[e] for e in chosen)
        for e in chosen:
            y = y + (p[e] / z) * s * (B[e].T @ (A[e] @ t))  # B[e] is [r, d_out]
        rows.append(y)
    return torch.stack(rows).reshape(*x.shape[:-1], -1)


def test_single_expert_equals_plain_lora():
    layer = _layer(1, 1)
    assert layer.router is None
    x = torch.randn(2, 4, 6, dtype=torch.float64)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    A, B = layer.experts_A[0], layer.experts_B[0]
    expected = x @ W.T + b + (6.0 / 3) * (x @ A.T) @ B  # B stored [r, d_out]
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dispatch", ["auto", "sparse", "dense", "batched"])
@pytest.mark.parametrize("n_experts,top_k", [(4, 2), (5, 1), (3, 3), (2, 2), (6, 4)])
def test_forward_matches_brute_force(n_experts, top_k, dispatch):
    layer = _layer(n_experts, top_k, seed=n_experts, dispatch=dispatch)
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _brute_force(layer, x), rtol=1e-10, atol=1e-10)


def test_router_weights_sum_to_one_over_selected_experts():
    layer = _layer(5, 2)
    probs, top_w, top_i = layer.route(torch.randn(40, 6, dtype=torch.float64))
    torch.testing.assert_close(top_w.sum(-1), torch.ones(40, dtype=torch.float64), rtol=0, atol=1e-12)
    assert top_i.shape == (40, 2) and bool((top_i[:, 0] != top_i[:, 1]).all())
    # the selected experts are the two most probable ones
    ref = probs.argsort(-1, descending=True)[:, :2]
    assert torch.equal(top_i, ref)


@pytest.mark.parametrize("dispatch", ["sparse", "dense", "batched"])
def test_only_the_top_k_experts_receive_gradient(dispatch):
    layer = _layer(6, 2, dispatch=dispatch)
    x = torch.randn(1, 3, 6, dtype=torch.float64)
    _, _, top_i = layer.route(x.reshape(-1, 6))
    chosen = set(top_i.flatten().tolist())
    assert 2 <= len(chosen) < 6
    layer(x).pow(2).sum().backward()
    for e in range(6):
        touched = bool(layer.experts_A.grad[e].abs().sum() > 0) and bool(layer.experts_B.grad[e].abs().sum() > 0)
        assert touched == (e in chosen), (e, chosen)
        if e not in chosen:  # exactly zero, not merely small
            assert not layer.experts_A.grad[e].any() and not layer.experts_B.grad[e].any()
    # the gradients agree with the brute-force mixture's
    ref = _layer(6, 2, dispatch=dispatch)
    _brute_force(ref, x).pow(2).sum().backward()
    torch.testing.assert_close(layer.experts_A.grad, ref.experts_A.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(layer.experts_B.grad, ref.experts_B.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(layer.router.weight.grad, ref.router.weight.grad, rtol=1e-9, atol=1e-10)


def test_balance_loss_on_a_hand_made_routing():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.5, 0.25, 0.25]])
    selected = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 1]])
    # f = assignments / 8 = [3, 3, 2] / 8 ; P = column means = [1.5, 1.25, 1.25] / 4
    expected = 3 * (3 / 8 * 1.5 / 4 + 3 / 8 * 1.25 / 4 + 2 / 8 * 1.25 / 4)
    assert float(switch_balance_loss(probs, selected, 3)) == pytest.approx(expected, abs=1e-7)
    # a mask drops the last token: f = [2, 2, 2] / 6 ; P = [1.0, 1.0, 1.0] / 3
    mask = torch.tensor([1, 1, 1, 0])
    assert float(switch_balance_loss(probs, selected, 3, mask)) == pytest.approx(1.0, abs=1e-7)
    # perfectly balanced routing gives exactly 1
    uniform = torch.full((4, 4), 0.25)
    assert float(switch_balance_loss(uniform, torch.tensor([[0, 1], [2, 3], [0, 2], [1, 3]]), 4)) == pytest.approx(1.0)


def test_layer_balance_loss_skips_padding(tiny):
    model, tok = tiny
    attach(model, [1, 3, 1, 1], dropout=0.0, balance_coef=0.001)
    name, layer = next((n, m) for n, m in moe_layers(model) if m.n_experts == 3)
    seen = {}
    layer.register_forward_hook(lambda mod, args, out: seen.setdefault("x", args[0].detach()))
    enc = tok(["a longer sentence here", "short"], return_tensors="pt", padding=True)
    model.train()
    model(**enc)
    x = seen["x"].reshape(-1, layer.in_features)[enc["attention_mask"].reshape(-1).bool()]
    probs = torch.softmax((x @ layer.router.weight.detach().T).double(), -1)
    chosen = probs.argsort(-1, descending=True)[:, :2]
    f = torch.stack([(chosen == e).sum() for e in range(3)]).double() / chosen.numel()
    expected = 3 * (f * probs.mean(0)).sum()
    assert float(layer.balance.detach()) == pytest.approx(float(expected), rel=1e-5)
    model.eval()
    model(**enc)
    assert layer.balance is None and moe.balance_loss(model) is None
    layer.track_balance = False  # not recorded when no balance loss is asked for
    model.train()
    model(**enc)
    assert layer.balance is None


def test_attach_creates_the_allocation_and_parameter_totals(tiny):
    model, _ = tiny
    n_params = {n: p.numel() for n, p in model.named_parameters()}
    attach(model, pd.Series([1, 2, 3, 4], index=pd.RangeIndex(4, name="layer")), rank=8)
    # tiny Llama: hidden 32, MLP 64, 4 heads of 8, 2 kv heads -> k/v out 16
    dims = {"q_proj": (32, 32), "k_proj": (32, 16), "v_proj": (32, 16), "o_proj": (32, 32),
            "gate_proj": (32, 64), "up_proj": (32, 64), "down_proj": (64, 32)}
    for i, block in enumerate(model.model.layers):
        n = i + 1
        found = {name.split(".")[-1]: m for name, m in block.named_modules() if isinstance(m, LoRAMoELinear)}
        assert set(found) == set(LLAMA_TARGETS)
        assert {m.n_experts for m in found.values()} == {n}
        assert {m.top_k for m in found.values()} == {1 if n == 1 else 2}
        for t, (d_in, d_out) in dims.items():
            assert found[t].experts_A.shape == (n, 8, d_in) and found[t].experts_B.shape == (n, 8, d_out)
            assert (found[t].router is None) == (n == 1)
    expected = [sum(n * 8 * (a + b) + (n * a if n > 1 else 0) for a, b in dims.values()) for n in (1, 2, 3, 4)]
    assert expected == [4096, 8704, 13056, 17408]
    table = moe.moe_table(model)
    assert table["trainable_params"].tolist() == expected
    assert table["experts"].tolist() == [1, 2, 3, 4]
    assert table["path"].tolist() == [f"model.layers.{i}" for i in range(4)]
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == sum(expected)
    assert all(("experts_" in n or ".router." in n) for n in trainable)
    # the base model's parameters are all still there, all frozen
    frozen = {n.replace(".base_layer", ""): p.numel() for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == n_params


def test_attach_leaves_the_output_unchanged_at_init(tiny):
    model, tok = tiny
    enc = tok(["hello there", "hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model(**enc).logits
        attach(model, [2, 1, 4, 3])
        after = model(**enc).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)


@pytest.mark.parametrize("experts,match", [
    ([1, 2, 3], "4 blocks"),
    ([1, 2, 0, 1], r"experts\[2\]=0"),
    ([1, 2.5, 1, 1], r"experts\[1\]=2.5"),
    ([1, float("nan"), 1, 1], r"experts\[1\]"),
    (pd.Series([1, 1, 1, 1], index=[1, 2, 3, 4]), "index"),
])
def test_attach_rejects_bad_allocations(tiny, experts, match):
    model, _ = tiny
    with pytest.raises(ValueError, match=match):
        attach(model, experts)


def test_attach_rejects_bad_config_and_double_attach(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="targets"):
        attach(model, [1, 1, 1, 1], targets=("q_proj", "nope"))
    # a rejected attach leaves the model untouched
    assert moe_layers(model) == [] and all(p.requires_grad for p in model.parameters())
    model2 = copy.deepcopy(tiny[0])
    with pytest.raises(ValueError, match="rank=0"):
        attach(model2, [1, 1, 1, 1], rank=0)
    with pytest.raises(ValueError, match="dispatch='fast'"):
        attach(model2, [1, 1, 1, 1], dispatch="fast")
    attach(model2, [1, 1, 1, 1])
    with pytest.raises(ValueError, match="already"):
        attach(model2, [1, 1, 1, 1])


def test_top_k_and_target_subsets(tiny):
    model, _ = tiny
    attach(model, [1, 2, 3, 4], targets=["q_proj", "down_proj"], top_k=3)
    layers = moe_layers(model)
    assert sorted({n.split(".")[-1] for n, _ in layers}) == ["down_proj", "q_proj"]
    assert [m.top_k for n, m in layers if n.endswith("q_proj")] == [1, 2, 3, 3]


def test_gpt2_conv1d_targets():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32,
                                       bos_token_id=0, eos_token_id=0)).double().eval()
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        before = model(ids).logits
    attach(model, [3, 1], dropout=0.0)
    names = [n for n, _ in moe_layers(model)]
    assert names == [f"transformer.h.{i}.{m}" for i in range(2)
                     for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)
    layer = model.transformer.h[0].mlp.c_fc  # Conv1D: y = x @ W + b with W [d_in, d_out]
    _randomize(layer)
    assert (layer.in_features, layer.out_features) == (16, 64)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    x = torch.randn(4, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _brute_force(layer, x, base=lambda t: t @ W + b),
                               rtol=1e-10, atol=1e-10)


def test_half_precision_base_gets_float32_adapters():
    base = nn.Linear(8, 4, dtype=torch.bfloat16)
    layer = LoRAMoELinear(base, 3, 2, rank=2, alpha=4.0)
    assert layer.experts_A.dtype == torch.float32 and layer.router.weight.dtype == torch.float32
    probs, top_w, _ = layer.route(torch.randn(5, 8, dtype=torch.bfloat16))
    assert probs.dtype == torch.float32 and top_w.dtype == torch.float32
    assert layer(torch.randn(5, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_save_and_load_roundtrip(tiny, tmp_path):
    from layerif.testing import tiny_model

    model, tok = tiny
    attach(model, [1, 2, 3, 4], balance_coef=0.001)
    for i, (_, layer) in enumerate(moe_layers(model)):
        _randomize(layer, seed=i)
    enc = tok(["save me", "and reload me"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**enc).logits
    moe.save_adapter(model, tmp_path / "adapter", data={"task": "unit"})
    manifest = json.loads((tmp_path / "adapter" / "manifest.json").read_text())
    assert manifest["kind"] == "moe_adapter"
    assert manifest["config"]["experts"] == [1, 2, 3, 4]
    assert manifest["config"]["balance_coef"] == 0.001

    fresh, _ = tiny_model()
    moe.load_adapter(fresh, tmp_path / "adapter")
    with torch.no_grad():
        got = fresh(**enc).logits
    assert torch.equal(got, expected)
    assert fresh._layerif_moe["config"].balance_coef == 0.001

    other, _ = tiny_model()
    attach(other, [4, 3, 2, 1])
    with pytest.raises(ValueError, match="another|made with"):
        moe.load_adapter(other, tmp_path / "adapter")
    with pytest.raises(ProvenanceError):
        moe.save_adapter(other, tmp_path / "adapter")
    moe.save_adapter(other, tmp_path / "adapter", overwrite=True)
    assert json.loads((tmp_path / "adapter" / "manifest.json").read_text())["config"]["experts"] == [4, 3, 2, 1]


@pytest.mark.slow
def test_attach_on_smollm2(smollm2):
    model, tok = smollm2
    model = copy.deepcopy(model)
    enc = tok(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        before = model(**enc).logits
    experts = pd.Series([5] * 30).rename_axis("layer")
    attach(model, experts)
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).logits, before, rtol=0, atol=0)
    cfg = model.config
    d, m = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, m), (d, m), (m, d)]
    per_block = sum(5 * 8 * (a + b) + 5 * a for a, b in shapes)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 30 * per_block


def test_auto_dispatch_rule():
    def path(e, k, device, dispatch="auto"):
        return LoRAMoELinear(nn.Linear(64, 32), e, k, rank=8, dispatch=dispatch).path(device)

    # CPU: the stored results' rule -- top-k dispatch unless every expert is selected anyway
    assert path(2, 1, "cpu") == path(5, 2, "cpu") == path(32, 2, "cpu") == "sparse"
    assert path(5, 5, "cpu") == path(2, 2, "cpu") == "dense"
    # accelerators: the batched kernel (path() only reads the device type: no GPU needed)
    assert path(5, 2, "cuda") == path(5, 5, torch.device("cuda", 1)) == path(32, 2, "mps") == "batched"
    # an explicit choice holds on every device
    for d in ("sparse", "dense", "batched"):
        assert path(5, 2, "cpu", d) == path(5, 2, "cuda", d) == d


@pytest.mark.parametrize("n_experts,top_k,same_as", [(5, 2, "sparse"), (3, 3, "dense")])
def test_auto_on_cpu_is_bit_identical_to_the_stored_rule(n_experts, top_k, same_as):
    # Stored results record dispatch="auto": on a CPU it must still compute exactly what it
    # did (float32, as the study trains), outputs and gradients to the last bit.
    torch.manual_seed(0)
    base = nn.Linear(48, 40)
    x = torch.randn(3, 20, 48)
    results = []
    for dispatch in ("auto", same_as):
        torch.manual_seed(1)
        layer = LoRAMoELinear(base, n_experts, top_k, rank=4, dropout=0.1, dispatch=dispatch).train()
        _randomize(layer, seed=2)
        torch.manual_seed(3)  # the same dropout draws
        y = layer(x)
        y.square().sum().backward()
        results.append((y, layer.experts_A.grad, layer.experts_B.grad, layer.router.weight.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def _model_grads(model, ids):
    """Logits and the gradient of every trainable parameter of ``model`` on ``ids``."""
    logits = model(input_ids=ids).logits
    logits.pow(2).mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _per_expert_reference(model):
    """``model`` with every LoRA-MoE layer computed token by token, expert by expert."""
    def plain_lora(lay, x):  # one expert, no router
        return lay.base_layer(x) + lay.scaling * (x @ lay.experts_A[0].T) @ lay.experts_B[0]

    for _, layer in moe_layers(model):
        fn = plain_lora if layer.router is None else (lambda lay, x: _brute_force(lay, x, base=lay.base_layer))
        layer.forward = (lambda lay, f: lambda x: f(lay, x))(layer, fn)
    return model


@pytest.mark.parametrize("dispatch", ["auto", "sparse", "dense", "batched"])
def test_each_dispatch_equals_the_per_expert_reference_in_a_model(tiny64, dispatch):
    # Uneven experts per block (1 = no router, 2 = top-2 of 2, 5 and 3 = top-2 routing),
    # float64: outputs and every expert, router and B gradient to 1e-10.
    model, _ = tiny64
    attach(model, [1, 2, 5, 3], dropout=0.0, dispatch=dispatch, seed=0)
    for i, (_, layer) in enumerate(moe_layers(model)):
        _randomize(layer, seed=i)
    ref = _per_expert_reference(copy.deepcopy(model))
    ids = torch.randint(4, 104, (2, 7), generator=torch.Generator().manual_seed(0))
    logits, grads = _model_grads(model, ids)
    ref_logits, ref_grads = _model_grads(ref, ids)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-10, atol=1e-10)
    assert grads.keys() == ref_grads.keys() and any("router" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("dispatch", ["sparse", "dense", "batched"])
def test_float32_dispatch_is_within_1e5_of_float64(dispatch):
    # The same weights in float32 and float64 (top-2 of 8 experts, 200 tokens, d 64 -> 96):
    # every dispatch's float32 output and gradients are within 1e-5 relative (of the
    # tensor's largest entry) of the float64 reference (measured: 2e-7 to 2e-6, the input
    # gradient the largest).
    torch.manual_seed(0)
    base64 = nn.Linear(64, 96, dtype=torch.float64)
    ref = LoRAMoELinear(base64, 8, 2, rank=8, alpha=16.0, dropout=0.0, dispatch="sparse")
    _randomize(ref, seed=1)
    lay = copy.deepcopy(ref).to(torch.float32)
    lay.dispatch = dispatch
    x = torch.randn(200, 64, dtype=torch.float64)
    x32 = x.float().requires_grad_()
    x64 = x.clone().requires_grad_()
    out = [(l, xi, l(xi)) for l, xi in ((lay, x32), (ref, x64))]
    for _, _, y in out:
        y.square().mean().backward()
    (l32, x32, y32), (l64, x64, y64) = out
    pairs = [(y32, y64), (x32.grad, x64.grad), (l32.experts_A.grad, l64.experts_A.grad),
             (l32.experts_B.grad, l64.experts_B.grad), (l32.router.weight.grad, l64.router.weight.grad)]
    for a, b in pairs:
        assert a.dtype == torch.float32
        assert float((a.detach().double() - b).abs().max() / b.abs().max()) < 1e-5


def test_batched_on_a_half_precision_base():
    # bfloat16 base, float32 adapters: batched casts the input once, scales through the
    # mixed-dtype branch, and agrees with dense on the same layer to bfloat16 rounding.
    torch.manual_seed(0)
    layer = LoRAMoELinear(nn.Linear(32, 24, dtype=torch.bfloat16), 4, 2, rank=4, dropout=0.0)
    _randomize(layer, seed=0)
    x = torch.randn(50, 32, dtype=torch.bfloat16)
    outs = {}
    for d in ("dense", "batched"):
        layer.dispatch = d
        outs[d] = layer(x)
    assert outs["batched"].dtype == torch.bfloat16
    diff = (outs["batched"].float() - outs["dense"].float()).abs().max()
    assert float(diff) <= 2 ** -7 * float(outs["dense"].float().abs().max())


def test_batched_balance_loss_equals_sparse():
    layers = {}
    for d in ("sparse", "batched"):
        layer = _layer(5, 2, dispatch=d).train()
        layer.track_balance = True
        layer(torch.randn(30, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
        layers[d] = layer.balance
    torch.testing.assert_close(layers["batched"], layers["sparse"], rtol=1e-12, atol=1e-12)


def test_batched_dispatches_fewer_ops_than_dense():
    # A device-free proxy for GPU launches (layerif.bench.ops): forward + backward of one
    # training step of a layer, 5 experts top-2.
    from layerif.bench.ops import count_ops

    x = torch.randn(64, 32, requires_grad=True)
    counts = {}
    for d in ("sparse", "dense", "batched"):
        torch.manual_seed(0)
        layer = LoRAMoELinear(nn.Linear(32, 48, bias=False).requires_grad_(False), 5, 2, rank=4,
                              dispatch=d).train()
        counts[d] = sum(count_ops(lambda: layer(x).square().sum().backward()).values())
    assert counts["batched"] < counts["dense"] < counts["sparse"]
    assert counts["sparse"] >= 5 * 4  # at least one fwd + bwd matmul pair per expert


def test_sparse_dispatch_multiplies_only_the_top_k_tokens_by_each_A():
    # Count matmul FLOPs: the input-side products cost k * N * r * d_in under top-k dispatch
    # against E * N * r * d_in when every expert sees every token.
    from torch.utils.flop_counter import FlopCounterMode

    n, d_in, d_out, r, E, k = 50, 40, 24, 4, 6, 2

    def flops(dispatch):
        torch.manual_seed(0)
        layer = LoRAMoELinear(nn.Linear(d_in, d_out, bias=False), E, k, rank=r, dropout=0.0, dispatch=dispatch)
        with FlopCounterMode(display=False) as counter:
            layer(torch.randn(n, d_in))
        return counter.get_total_flops()

    base_and_router = 2 * n * d_in * d_out + 2 * n * d_in * E
    stacked_b = 2 * n * E * r * d_out
    assert flops("sparse") == base_and_router + 2 * n * k * r * d_in + stacked_b
    assert flops("dense") == base_and_router + 2 * n * E * r * d_in + stacked_b


def test_attach_follows_the_models_train_or_eval_mode(tiny):
    """A model in eval mode stays deterministic after attach (no active expert dropout)."""
    model, tok = tiny
    model.eval()
    attach(model, [1, 2, 3, 4], dropout=0.5)
    assert not any(m.training for m in model.modules())
    for i, (_, layer) in enumerate(moe_layers(model)):
        _randomize(layer, seed=i)
    enc = tok(["the same twice"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, model(**enc).logits)


def test_detach_gives_back_the_exact_base_model(tiny):
    model, tok = tiny
    ids = tok(["the cat sat", "a dog"], return_tensors="pt", padding=True)
    model.eval()
    before = model(**ids).logits.detach().clone()
    modules_before = {n: type(m) for n, m in model.named_modules()}
    model.lm_head.weight.requires_grad_(False)  # a caller's own freezing is kept
    attach(model, [1, 2, 3, 4], dropout=0.0)
    for layer in (l for _, l in moe_layers(model)):
        _randomize(layer)  # the adapter now changes the output
    assert not torch.allclose(model(**ids).logits, before)
    assert moe.detach(model) is model
    assert {n: type(m) for n, m in model.named_modules()} == modules_before
    assert not moe_layers(model) and not hasattr(model, "_layerif_moe")
    assert torch.equal(model(**ids).logits, before)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    assert grads.pop("lm_head.weight") is False and all(grads.values())
    assert not model._forward_pre_hooks  # the mask hook is gone
    attach(model, [2, 2, 2, 2])  # and the model takes a new adapter
    with pytest.raises(ValueError, match="no LoRA-MoE adapter"):
        moe.detach(moe.detach(model))


def test_config_object_equals_keywords_and_seed_is_private(tiny):
    from layerif.testing import tiny_model

    cfg = moe.MoEConfig(rank=4, alpha=8.0, dropout=0.0, top_k=1, seed=7)
    a, _ = tiny_model()
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    attach(a, [1, 2, 3, 4], config=cfg)
    assert torch.equal(torch.random.get_rng_state(), state)  # seeded init leaves the caller's RNG
    b, _ = tiny_model()
    attach(b, [1, 2, 3, 4], config=moe.MoEConfig(seed=7), rank=4, alpha=8.0, dropout=0.0, top_k=1)
    assert a._layerif_moe["config"] == b._layerif_moe["config"] == cfg
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert all(torch.equal(pa[n], pb[n]) for n in pa)  # same seed, same initial experts
    c, _ = tiny_model()
    attach(c, [1, 2, 3, 4], config=cfg.replace(seed=8))
    assert not torch.equal(dict(c.named_parameters())[next(n for n in pa if "experts_A" in n)],
                           pa[next(n for n in pa if "experts_A" in n)])
    with pytest.raises(ValueError, match="seed='x'"):
        moe.MoEConfig(seed="x")


def test_moe_presets():
    assert moe.MoEConfig.PRESETS == ("smoke", "paper")
    paper = moe.MoEConfig.preset("paper")
    assert (paper.rank, paper.alpha, paper.dropout, paper.top_k, paper.balance_coef) == (8, 16.0, 0.05, 2, 0.0)
    assert moe.MoEConfig.preset("smoke").rank < paper.rank
    with pytest.raises(ValueError, match="preset='cpu'"):
        moe.MoEConfig.preset("cpu")
