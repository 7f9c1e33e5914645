"""The block-by-block driver, the sparsity report and OWL's outlier ratios on the tiny Llama.

References run the *whole model* forward with hooks (no block-input capture, no kwargs
pass-through), pruning one block at a time, so they check the driver's capture and its
sequential feeding of pruned outputs independently.
"""
import pandas as pd
import pytest
import torch

from layerif import allocate
from layerif.models import describe, linear_modules, transformer_blocks
from layerif.testing import tiny_model
from layerif.prune import (PruneConfig, magnitude, matrix_paths, owl_outlier_ratios, prune_model,
                           sparsegpt, sparsity_report, wanda)


def _calibration(n=5, seq=24, seed=0):
    return torch.randint(4, 104, (n, seq), generator=torch.Generator().manual_seed(seed))


def _config(method, **settings):
    """The PruneConfig of ``method`` sized for :func:`_calibration`'s default rows."""
    return PruneConfig(method=method, n_samples=5, seq_len=24, **settings)


def _full_forward_stats(model, block, calibration, kind):
    """Calibration statistic of each linear in ``block`` from plain full-model forwards."""
    sums = {}

    def make(name):
        def hook(module, args, output):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            stat = (x ** 2).sum(0) if kind == "act" else 2 * x.T @ x
            sums[name] = sums.get(name, 0) + stat
        return hook

    handles = [m.register_forward_hook(make(n)) for n, m in linear_modules(block)]
    with torch.no_grad():  # all rows in one batch (the driver under test uses batches of 2)
        model(input_ids=calibration, use_cache=False)
    for h in handles:
        h.remove()
    return {k: v / len(calibration) for k, v in sums.items()}


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_driver_matches_block_by_block_full_forward_reference(tiny64, method):
    model, _ = tiny64
    reference, _ = tiny_model(dtype=torch.float64)
    cal = _calibration()
    ratios = pd.Series([0.3, 0.5, 0.6, 0.4])
    prune_model(model, _config(method, batch_size=2), ratios, cal, progress=False)

    kind = "act" if method == "wanda" else "hessian"
    for layer, (_, block) in enumerate(transformer_blocks(reference)):
        stats = _full_forward_stats(reference, block, cal, kind)
        with torch.no_grad():
            for name, module in linear_modules(block):
                W = module.weight
                new = wanda(W, stats[name], ratios[layer]) if method == "wanda" \
                    else sparsegpt(W, stats[name], ratios[layer])
                W.copy_(new)
    for (path, got), (_, want) in zip(transformer_blocks(model), transformer_blocks(reference)):
        for (name, a), (_, b) in zip(linear_modules(got), linear_modules(want)):
            assert torch.equal(a.weight == 0, b.weight == 0), f"{path}.{name}"
            torch.testing.assert_close(a.weight, b.weight, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_per_block_ratios_and_global_target(tiny, method):
    model, _ = tiny
    ratios = pd.Series({0: 0.25, 1: 0.6, 2: 0.45, 3: 0.7})
    report = prune_model(model, _config(method), ratios, _calibration(), progress=False)
    rows_total = 0
    for layer, (path, block) in enumerate(transformer_blocks(model)):
        assert report.loc[layer, "path"] == path
        for name, module in linear_modules(block):
            d_out, d_in = module.weight.shape
            rows_total += d_out
            zeros = int((module.weight == 0).sum())
            want = d_out * int(d_in * ratios[layer]) if method == "wanda" else int(d_out * d_in * ratios[layer])
            assert zeros == want, (layer, name)
            assert report.loc[layer, name] == pytest.approx(want / (d_out * d_in))
    params = report["params"]
    target = float((ratios * params).sum() / params.sum())
    achieved = report.attrs["global_sparsity"]
    assert achieved == pytest.approx(float(report["zeros"].sum() / params.sum()))
    assert abs(achieved - target) * params.sum() <= rows_total  # one element per row


def test_per_matrix_overrides_and_nm(tiny):
    model, _ = tiny
    path = transformer_blocks(model)[1][0] + ".mlp.down_proj"
    report = prune_model(model, _config("magnitude"), 0.5, per_matrix={path: 0.875}, progress=False)
    assert report.loc[1, "mlp.down_proj"] == pytest.approx(int(32 * 64 * 0.875) / (32 * 64))
    assert report.loc[1, "mlp.up_proj"] == 0.5
    model2, _ = tiny_model()
    prune_model(model2, _config("wanda", nm=(2, 4)), 0.5, _calibration(), progress=False)
    for _, block in transformer_blocks(model2):
        for _, module in linear_modules(block):
            groups = (module.weight == 0).reshape(module.weight.shape[0], -1, 4).sum(-1)
            assert (groups == 2).all()


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt"])
def test_allocate_per_matrix_feeds_prune_model(tiny, method):
    """allocate.per_matrix (a flat depth-order list) -> prune_model(per_matrix=...)."""
    model, _ = tiny
    values = pd.Series({0: 0.2, 1: 0.55, 2: 0.35, 3: 0.7}, name="sparsity")
    flat = allocate.per_matrix(values, describe(model))
    assert isinstance(flat, list) and len(flat) == len(matrix_paths(model)) == 28
    report = prune_model(model, _config(method), 0.5, _calibration(), per_matrix=flat, progress=False)
    for layer, (path, block) in enumerate(transformer_blocks(model)):
        for name, module in linear_modules(block):
            n = module.weight.numel()
            assert int((module.weight == 0).sum()) == int(n * values[layer]), (layer, name)
            assert report.loc[layer, name] == int(n * values[layer]) / n


def test_a_flat_per_matrix_list_is_read_in_depth_order(tiny):
    model, _ = tiny
    paths = matrix_paths(model)
    assert paths[:2] == [f"{transformer_blocks(model)[0][0]}.{n}" for n, _ in
                         linear_modules(transformer_blocks(model)[0][1])[:2]]
    flat = [0.05 + 0.9 * k / len(paths) for k in range(len(paths))]  # a different ratio each
    prune_model(model, _config("magnitude"), None, per_matrix=flat, progress=False)
    modules = dict(model.named_modules())
    for path, ratio in zip(paths, flat):
        w = modules[path].weight
        assert int((w == 0).sum()) == int(w.numel() * ratio), path
    # the same ratios as a mapping give the same model
    other, _ = tiny_model()
    prune_model(other, _config("magnitude"), 0.5, per_matrix=dict(zip(paths, flat)), progress=False)
    for (_, a), (_, b) in zip(model.named_parameters(), other.named_parameters()):
        assert torch.equal(a, b)


def test_bad_per_matrix_sequences_are_named(tiny):
    model, _ = tiny
    values = pd.Series([0.5, 0.5, 0.5, 0.5])
    partial = allocate.per_matrix(values, describe(model), modules=["mlp.down_proj"])
    with pytest.raises(ValueError, match=r"per_matrix is a sequence of 4 ratios but the model "
                       r"has 28 linear matrices"):
        prune_model(model, _config("magnitude"), 0.5, per_matrix=partial, progress=False)
    with pytest.raises(ValueError, match=r"per_matrix\['model.layers.0.self_attn.q_proj'\]=1.5"):
        prune_model(model, _config("magnitude"), 0.5, per_matrix=[1.5] + [0.5] * 27, progress=False)
    with pytest.raises(ValueError, match="per_matrix of type str is invalid"):
        prune_model(model, _config("magnitude"), 0.5, per_matrix="0.5", progress=False)
    with pytest.raises(ValueError, match="sparsity=None is invalid: per_matrix leaves 27 of 28"):
        prune_model(model, _config("magnitude"), None, per_matrix={matrix_paths(model)[0]: 0.5}, progress=False)
    assert sparsity_report(model)["zeros"].sum() == 0


def test_magnitude_driver_equals_per_matrix_function(tiny):
    model, _ = tiny
    dense, _ = tiny_model()
    prune_model(model, _config("magnitude"), 0.4, progress=False)
    for (_, a), (_, b) in zip(transformer_blocks(model), transformer_blocks(dense)):
        for (_, ma), (_, mb) in zip(linear_modules(a), linear_modules(b)):
            assert torch.equal(ma.weight, magnitude(mb.weight, 0.4))


def test_sparsity_report_counts_planted_zeros(tiny):
    model, _ = tiny
    block = transformer_blocks(model)[2][1]
    with torch.no_grad():
        block.self_attn.q_proj.weight[:3] = 0  # 3 rows of 32
    report = sparsity_report(model)
    assert list(report.index) == [0, 1, 2, 3] and report.index.name == "layer"
    assert report.loc[2, "self_attn.q_proj"] == pytest.approx(3 / 32)
    assert report.loc[2, "zeros"] == 96 and report.loc[0, "zeros"] == 0
    assert report.attrs["global_sparsity"] == pytest.approx(96 / report["params"].sum())


def test_bad_inputs_raise_clear_errors(tiny):
    model, _ = tiny
    cal = _calibration()
    with pytest.raises(ValueError, match=r"sparsity=1.2"):
        prune_model(model, _config("wanda"), 1.2, cal, progress=False)
    with pytest.raises(ValueError, match=r"missing \[3\]"):
        prune_model(model, _config("wanda"), pd.Series([0.5, 0.5, 0.5]), cal, progress=False)
    with pytest.raises(ValueError, match=r"sparsity\[1\]"):
        prune_model(model, _config("wanda"), pd.Series([0.5, 1.5, 0.5, 0.5]), cal, progress=False)
    with pytest.raises(ValueError, match="empty"):
        prune_model(model, _config("sparsegpt"), 0.5, cal[:0], progress=False)
    with pytest.raises(ValueError, match="calibration=None"):
        prune_model(model, _config("wanda"), 0.5, None, progress=False)
    with pytest.raises(ValueError, match="method="):
        prune_model(model, _config("random"), 0.5, cal, progress=False)
    with pytest.raises(ValueError, match="per_matrix key"):
        prune_model(model, _config("magnitude"), 0.5, per_matrix={"model.layers.9.mlp.up_proj": 0.1}, progress=False)
    assert sparsity_report(model)["zeros"].sum() == 0  # nothing was pruned by failed calls


# ----------------------------------------------------------------------------- OWL
def _owl_reference(model, calibration, M):
    """Outlier % per block from one set of full dense forwards (the model is never pruned)."""
    out = {}
    for layer, (_, block) in enumerate(transformer_blocks(model)):
        stats = _full_forward_stats(model, block, calibration, "act")
        scores = torch.cat([(m.weight.double().abs() * stats[n].sqrt()).flatten()
                            for n, m in linear_modules(block)])
        out[layer] = 100.0 * float((scores > M * scores.mean()).double().mean())
    return pd.Series(out)


def test_owl_ratios_match_reference_and_find_planted_outliers(tiny64):
    model, _ = tiny64
    g = torch.Generator().manual_seed(3)
    # Plant outliers in the last block (2% of its weights x 30): planted earlier, they would
    # also inflate the activations, hence the outlier ratio, of the blocks after it.
    with torch.no_grad():
        for _, module in linear_modules(transformer_blocks(model)[3][1]):
            hit = torch.rand(module.weight.shape, generator=g) < 0.02
            module.weight[hit] *= 30
    cal = _calibration()
    got = owl_outlier_ratios(model, cal, M=5, batch_size=2, progress=False)
    assert got.index.name == "layer" and list(got.index) == [0, 1, 2, 3]
    pd.testing.assert_series_equal(got, _owl_reference(model, cal, 5), check_names=False, check_index_type=False)
    assert got[3] > 2 * got.drop(3).max()
    assert sparsity_report(model)["zeros"].sum() == 0  # the model is left dense


# --------------------------------------------------------- non-finite weights / statistics
def _poisoned(where="model.layers.3.self_attn.q_proj", value=float("nan")):
    model, _ = tiny_model()
    with torch.no_grad():
        model.get_submodule(where).weight.view(-1)[5] = value
    return model


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_a_nan_weight_is_refused_naming_its_module_and_nothing_is_pruned(method):
    # Before: magnitude and wanda returned normally (global sparsity 0.1667 for wanda, the
    # NaN still there) and sparsegpt blamed percdamp.
    from layerif._config import NonFiniteError

    model = _poisoned()
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(NonFiniteError) as err:
        prune_model(model, _config(method), 0.5, _calibration(), progress=False)
    message = str(err.value)
    assert message.startswith("model.layers.3.self_attn.q_proj: weights hold 1 NaN and 0 inf")
    assert "percdamp" not in message and "\n" not in message
    for name, p in model.named_parameters():  # refused before any block was touched
        assert torch.allclose(p, before[name], rtol=0, atol=0, equal_nan=True), name


def test_an_inf_outside_the_linears_is_named_too():
    model = _poisoned("model.layers.2.input_layernorm", float("inf"))
    with pytest.raises(ValueError, match=r"^model\.layers\.2\.input_layernorm: weights hold 0 "
                                         r"NaN and 1 inf of 32 values"):
        prune_model(model, _config("wanda"), 0.5, _calibration(), progress=False)


@pytest.mark.parametrize("method, kind", [("wanda", "act_sq_norm"), ("sparsegpt", "hessian")])
def test_overflowing_activations_are_caught_in_the_next_blocks_statistics(method, kind):
    # Finite but huge weights in block 1's MLP: its outputs overflow float32 (inf), so block
    # 2's calibration inputs (and statistics) are not finite; blocks 0-1 were pruned already.
    model, _ = tiny_model()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.fill_(3e38)
        model.model.layers[1].mlp.up_proj.weight.mul_(1e4)
    with pytest.raises(ValueError, match=rf"^model\.layers\.2\.self_attn\.q_proj: calibration "
                                         rf"statistics \({kind} of its inputs\) hold"):
        prune_model(model, _config(method), 0.5, _calibration(), progress=False)


def test_per_matrix_pruners_refuse_non_finite_inputs():
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(8, 16, generator=gen)
    X = torch.randn(16, 40, generator=gen)
    act, H = (X * X).sum(1), 2 * X @ X.T / 40
    bad_W = W.clone()
    bad_W[0, 0] = float("nan")
    for call in (lambda: magnitude(bad_W, 0.5), lambda: wanda(bad_W, act, 0.5),
                 lambda: sparsegpt(bad_W, H, 0.5)):
        with pytest.raises(ValueError, match=r"^W: weights hold 1 NaN and 0 inf of 128 values"):
            call()
    bad_act, bad_H = act.clone(), H.clone()
    bad_act[3], bad_H[3, 3] = float("inf"), float("nan")
    with pytest.raises(ValueError, match=r"^act_sq_norm: calibration statistics hold 0 NaN and 1"):
        wanda(W, bad_act, 0.5)
    with pytest.raises(ValueError, match=r"^H: calibration statistics \(Hessian\) hold 1 NaN") as err:
        sparsegpt(W, bad_H, 0.5)
    assert "percdamp" not in str(err.value)
