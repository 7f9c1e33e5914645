"""layerif.baselines: alpha_hill against a loop port of the estimator and known tails;
AlphaPruning, OWL, MoLA and AlphaLoRA against hand-computed fixtures and properties."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layerif import allocate as al
from layerif.baselines import (MOLA_PATTERNS, alpha_hill, alpha_hill_table, alphalora,
                               alphapruning_sparsity, esd_alpha, mola, owl_sparsity, spectrum)

SETTINGS = settings(max_examples=150, deadline=None)


# ----------------------------------------------------------------------------- alpha_hill

def loop_alpha(eigs, fit="peak", bins=100, fix_lower_bound=False):
    """The estimator as the reference describes it: one cut-off at a time, plain numpy."""
    lam = np.sort(np.asarray(eigs, dtype=np.float64))
    big_n = len(lam)
    if fit == "mid":
        i = big_n // 2
        n = big_n - i
        return 1 + n / np.sum(np.log(lam[i:] / lam[i]))
    counts, edges = np.histogram(np.log10(lam), bins=bins)
    peak = 10 ** edges[np.argmax(counts)]
    lower = 0.95 * peak if fix_lower_bound else np.log10(0.95 * peak)
    alphas, ds = np.zeros(big_n - 1), np.ones(big_n - 1)  # untouched slot: alpha 0, D 1
    for i in range(big_n - 1):
        if lam[i] < lower:
            continue
        if lam[i] > 1.5 * peak:
            break
        n = big_n - i
        alphas[i] = 1 + n / np.sum(np.log(lam[i:] / lam[i]))
        if alphas[i] > 1:
            cdf = 1 - (lam[i:] / lam[i]) ** (1 - alphas[i])
            ds[i] = np.max(np.abs(cdf - np.arange(n) / n))
    return alphas[np.argmin(ds)]  # first minimum


def with_spectrum(eigs, rows, seed):
    """W = U diag(sqrt(eigs)) V^T with Haar-random U (rows x N) and V (N x N)."""
    g = np.random.default_rng(seed)
    n = len(eigs)
    u = np.linalg.qr(g.standard_normal((rows, n)))[0]
    v = np.linalg.qr(g.standard_normal((n, n)))[0]
    return torch.from_numpy(u @ np.diag(np.sqrt(eigs)) @ v.T)


def pareto(alpha, n, seed, scale=1.0):
    """n draws from p(x) ~ x^-alpha on [scale, inf)."""
    return scale * (1 + np.random.default_rng(seed).pareto(alpha - 1, n))


@pytest.mark.parametrize("scale", [1.0, 300.0])
@pytest.mark.parametrize("kind", ["gaussian", "student", "pareto"])
def test_esd_alpha_matches_the_loop_estimator(kind, scale):
    g = np.random.default_rng(7)
    if kind == "gaussian":  # Marchenko-Pastur bulk: the peak is inside the spectrum
        w = torch.from_numpy(g.standard_normal((96, 160)) / np.sqrt(160))
    elif kind == "student":  # heavy-tailed entries
        w = torch.from_numpy(g.standard_t(3, size=(120, 80)) / 10)
    else:
        w = with_spectrum(pareto(3.0, 100, seed=1), 140, seed=2)
    w = w * math.sqrt(scale)  # scale 300 puts lambda_peak above 10.5: the quirk bites
    eigs = np.linalg.svd(w.numpy(), compute_uv=False) ** 2
    for fix in (False, True):
        ours = esd_alpha(w, "peak", fix_lower_bound=fix)
        assert ours == pytest.approx(loop_alpha(eigs, "peak", fix_lower_bound=fix), rel=1e-9)
        assert ours > 1
    assert esd_alpha(w, "mid") == pytest.approx(loop_alpha(eigs, "mid"), rel=1e-9)


def test_the_reference_lower_bound_quirk_can_change_the_fit():
    # A power law from lambda = 20 with alpha = 2: log10 lambda is nearly flat, so the
    # histogram peak is not at the bottom. The reference bound log10(0.95 lambda_peak) < 20
    # admits every cut-off up to 1.5 lambda_peak; 0.95 lambda_peak does not, and here the
    # two choose different cut-offs. Both agree with the loop port.
    w = with_spectrum(pareto(2.0, 200, seed=1, scale=20.0), 220, seed=11)
    eigs = np.linalg.svd(w.numpy(), compute_uv=False) ** 2
    quirk, fixed = esd_alpha(w), esd_alpha(w, fix_lower_bound=True)
    assert quirk == pytest.approx(loop_alpha(eigs), rel=1e-9)
    assert fixed == pytest.approx(loop_alpha(eigs, fix_lower_bound=True), rel=1e-9)
    assert abs(quirk - fixed) > 1e-3


@pytest.mark.parametrize("true_alpha", [2.5, 4.0])
def test_alpha_recovers_a_known_power_law_tail(true_alpha):
    """Eigenvalues drawn from p(x) ~ x^-alpha (x >= 1) and hidden in W = U diag(s) V^T.

    The Hill MLE on n tail points has standard deviation (alpha - 1)/sqrt(n); n >= 200
    here (0.07 (alpha - 1)). Tolerance: each fit within 0.3 (alpha - 1) (> 4 sd) and the
    mean of four independent matrices within 0.12 (alpha - 1) (> 3 sd).
    """
    tol = true_alpha - 1
    fits = {"peak": [], "mid": []}
    for seed in range(4):
        w = with_spectrum(pareto(true_alpha, 400, seed=seed, scale=0.01), 440, seed=seed + 100)
        for fit in fits:
            fits[fit].append(esd_alpha(w, fit))
    for fit, values in fits.items():
        values = np.asarray(values)
        assert np.abs(values - true_alpha).max() < 0.3 * tol, (fit, values)
        assert abs(values.mean() - true_alpha) < 0.12 * tol, (fit, values)


def test_esd_alpha_ignores_zero_eigenvalues_and_rejects_bad_input():
    w = with_spectrum(pareto(3.0, 60, seed=4), 80, seed=5)
    padded = torch.cat([w, torch.zeros(80, 20, dtype=w.dtype)], dim=1)  # 20 exact zeros
    eigs = np.linalg.svd(w.numpy(), compute_uv=False) ** 2
    assert esd_alpha(padded, "mid") == pytest.approx(loop_alpha(eigs, "mid"), rel=1e-9)
    with pytest.raises(ValueError, match="fit='tail'"):
        esd_alpha(w, "tail")
    with pytest.raises(ValueError, match="bins=0"):
        esd_alpha(w, bins=0)
    with pytest.raises(ValueError, match="expected a matrix"):
        esd_alpha(torch.ones(5))
    with pytest.raises(ValueError, match="non-zero"):
        esd_alpha(torch.zeros(4, 4))


def test_alpha_hill_on_the_tiny_llama(tiny64):
    from layerif.models import linear_modules, transformer_blocks

    model, _ = tiny64
    alpha = alpha_hill(model, progress=False)
    assert list(alpha.index) == [0, 1, 2, 3] and alpha.index.name == "layer"
    assert alpha.name == "alpha" and np.isfinite(alpha).all() and (alpha > 1).all()
    for layer, (_, block) in enumerate(transformer_blocks(model)):
        per = [loop_alpha(np.linalg.svd(m.weight.detach().numpy(), compute_uv=False) ** 2)
               for _, m in linear_modules(block)]
        assert len(per) == 7
        assert alpha[layer] == pytest.approx(np.mean(per), rel=1e-9)
    table = alpha_hill_table(model, fit="mid", progress=False)
    assert len(table) == 28 and table["path"].iloc[0] == "model.layers.0.self_attn.q_proj"
    assert table["n_eigs"].iloc[1] == 16  # k_proj: 2 kv heads x 8 = 16 rows


def test_float32_spectrum_equals_float64_to_float32_rounding():
    # well conditioned: eigenvalues in [1, 4] (singular values in [1, 2])
    eigs = np.linspace(1.0, 4.0, 64)
    w = with_spectrum(eigs, 96, seed=12)
    lam64 = spectrum(w)
    lam32 = spectrum(w, precision="float32")
    assert lam64.dtype == lam32.dtype == torch.float64  # the fit always runs in float64
    np.testing.assert_allclose(lam64.numpy(), eigs, rtol=1e-12)
    eps32 = float(np.finfo(np.float32).eps)
    # float32 SVD: error ~ a few eps * ||W||^2; squares double the relative error
    assert float((lam32 - lam64).abs().max()) <= 64 * eps32 * float(lam64.max())
    assert not torch.equal(lam32, lam64)  # it is a different computation
    # the input's dtype does not matter, only the precision asked for
    assert torch.equal(spectrum(w.float(), precision="float64"), spectrum(w.float().double()))
    # the smooth (mid) fit moves by float32 rounding only
    assert esd_alpha(w, "mid", precision="float32") == pytest.approx(esd_alpha(w, "mid"), rel=1e-5)


def test_precision_is_threaded_and_validated(tiny64):
    model, _ = tiny64
    a64 = alpha_hill_table(model, fit="mid", progress=False)
    a32 = alpha_hill_table(model, fit="mid", progress=False, precision="float32")
    np.testing.assert_allclose(a32["alpha"], a64["alpha"], rtol=1e-4)
    per_block = alpha_hill(model, fit="mid", progress=False, precision="float32")
    np.testing.assert_allclose(per_block, a32.groupby("layer")["alpha"].mean(), rtol=1e-12)
    for call in (lambda: spectrum(torch.eye(3), precision="float16"),
                 lambda: esd_alpha(torch.eye(3), precision="half"),
                 lambda: alpha_hill(model, precision=torch.float32, progress=False)):
        with pytest.raises(ValueError, match="precision=.* is invalid: expected one of"):
            call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_esd_alpha_on_cuda_matches_cpu():
    w = with_spectrum(pareto(3.0, 300, seed=8), 320, seed=9)
    for fit in ("peak", "mid"):
        assert esd_alpha(w.to("cuda").float(), fit) == pytest.approx(
            esd_alpha(w.float(), fit), rel=1e-6)


# ----------------------------------------------------------------------------- AlphaPruning

def test_alphapruning_hand_computed():
    # alpha [2, 3, 4, 5], eps .2 -> r = [.8, .9333, 1.0667, 1.2]; equal d -> eta = .5
    out = alphapruning_sparsity([2, 3, 4, 5], 0.5, [7, 7, 7, 7], epsilon=0.2)
    np.testing.assert_allclose(out, [0.4, 0.5 * 2.8 / 3, 0.5 * 3.2 / 3, 0.6], atol=1e-12)


def test_alphapruning_blockwise_equals_the_reference_per_matrix_form():
    # AlphaPruning repeats each block alpha over its matrices and rescales with the
    # per-matrix prunable counts; per-block with d = block totals must give the same.
    alpha = pd.Series([3.1, 2.4, 4.0, 3.3, 2.9])
    sizes = np.array([10, 10, 10, 10, 40, 40, 40], dtype=float)  # 7 matrices per block
    metric = np.repeat(alpha.to_numpy(), 7)
    prunable = np.tile(sizes, 5)
    r = (metric - metric.min()) / (metric.max() - metric.min()) * 0.6 + 0.7
    ratios = r * prunable.sum() * 0.6 / (prunable * r).sum()
    block = alphapruning_sparsity(alpha, 0.6, [sizes.sum()] * 5, epsilon=0.3)
    paths = pd.Series([f"model.layers.{i}" for i in range(5)])
    flat = al.per_matrix(block, paths, modules=[f"m{k}" for k in range(7)])
    np.testing.assert_allclose(flat, ratios, rtol=1e-12)


# ----------------------------------------------------------------------------- OWL

def test_owl_hand_computed():
    # D = [1,2,3,4] -> x = [0, .0533, .1067, .16], mean .08 -> .5 - (x - .08)
    out = owl_sparsity(pd.Series([1.0, 2.0, 3.0, 4.0]), 0.5, lam=0.08)
    np.testing.assert_allclose(out, [0.58, 0.5 - 0.16 / 3 + 0.08, 0.5 - 0.32 / 3 + 0.08, 0.42],
                               atol=1e-12)
    np.testing.assert_allclose(owl_sparsity([2.0] * 3, 0.4), 0.4)


@SETTINGS
@given(d=st.lists(st.floats(0, 100), min_size=1, max_size=40),
       target=st.floats(0.35, 0.65), lam=st.floats(0, 0.08), scale=st.floats(0.01, 100))
def test_owl_invariants(d, target, lam, scale):
    d = np.asarray(d)
    out = owl_sparsity(d, target, lam).to_numpy()
    assert out.mean() == pytest.approx(target, abs=1e-12)
    order = np.argsort(d, kind="stable")
    assert (np.diff(out[order]) <= 1e-12).all()  # more outliers -> less pruning
    if d.max() > d.min():
        assert out.max() - out.min() == pytest.approx(2 * lam, abs=1e-12)
    np.testing.assert_allclose(owl_sparsity(d * scale, target, lam), out, atol=1e-9)


def test_owl_rejects_bad_input():
    with pytest.raises(ValueError, match="lam=0.3 is too large"):
        owl_sparsity([0.0, 1.0], 0.2, lam=0.3)
    with pytest.raises(ValueError, match="lam=-0.1"):
        owl_sparsity([0.0, 1.0], 0.5, lam=-0.1)
    with pytest.raises(ValueError, match="target=1.5"):
        owl_sparsity([0.0, 1.0], 1.5)
    with pytest.raises(ValueError, match="outlier_ratio"):
        owl_sparsity([-1.0, 1.0], 0.5)


# ----------------------------------------------------------------------------- MoLA

def test_mola_at_32_layers_is_by_eights():
    assert mola("2468", 32).tolist() == [2] * 8 + [4] * 8 + [6] * 8 + [8] * 8
    assert mola("8642", 32).tolist() == [8] * 8 + [6] * 8 + [4] * 8 + [2] * 8
    # the paper's totals: 160 for 2468/5555/8642, 80 for 1234, 224 for 46810
    totals = {p: int(mola(p, 32).sum()) for p in MOLA_PATTERNS}
    assert totals == {"2468": 160, "5555": 160, "8642": 160, "1234": 80, "46810": 224}
    # 30 blocks (SmolLM2): quarter floor(4 i / 30) -> sizes 8, 7, 8, 7
    assert mola("1234", 30).tolist() == [1] * 8 + [2] * 7 + [3] * 8 + [4] * 7


@given(n=st.integers(1, 100), pattern=st.sampled_from(sorted(MOLA_PATTERNS)))
def test_mola_quarters_are_balanced(n, pattern):
    out = mola(pattern, n)
    assert list(out.index) == list(range(n)) and out.name == "experts"
    quarter = np.array([4 * i // n for i in range(n)])
    assert (np.diff(quarter) >= 0).all()
    sizes = np.bincount(quarter, minlength=4)
    if n >= 4:
        assert sizes.max() - sizes.min() <= 1
    assert out.tolist() == [MOLA_PATTERNS[pattern][q] for q in quarter]


def test_mola_rejects_bad_patterns():
    with pytest.raises(ValueError, match="pattern='2460'"):
        mola("2460", 32)
    with pytest.raises(ValueError, match="pattern="):
        mola((1, 2, 0, 4), 32)
    with pytest.raises(ValueError, match="n_layers=0"):
        mola("2468", 0)


# ----------------------------------------------------------------------------- AlphaLoRA

def test_alphalora_reference_rounding_and_its_quirk():
    # shares [2.22, 3.33, 4.44] round to [2, 3, 4] (9); the reference adds the missing
    # expert at argmin(alpha^beta - n) = argmin([0, 0, 0]) -> block 0; largest remainder
    # gives it to the largest fraction (block 2).
    assert alphalora([2, 3, 4], 10, beta=1.0, rounding="reference").tolist() == [3, 3, 4]
    assert alphalora([2, 3, 4], 10, beta=1.0).tolist() == [2, 3, 5]
    # shares [.019, .019, .019, 5.94]: the reference leaves three blocks without experts
    assert alphalora([1, 1, 1, 10], 6, rounding="reference").tolist() == [0, 0, 0, 6]
    assert alphalora([1, 1, 1, 10], 6).tolist() == [1, 1, 1, 3]


@SETTINGS
@given(alpha=st.lists(st.floats(1.01, 12.0), min_size=1, max_size=40),
       extra=st.integers(0, 200), beta=st.floats(0.5, 4.0))
def test_alphalora_invariants(alpha, extra, beta):
    a = np.asarray(alpha)
    total = len(a) + extra
    n = alphalora(a, total, beta).to_numpy()
    assert n.sum() == total and (n >= 1).all()
    share = a ** beta / (a ** beta).sum() * total
    big = share >= 1
    if (n > 1).any() and big.all():  # no block lifted to one: plain apportionment
        assert (np.abs(n - share) < 1 + 1e-9).all()
    w = (a / a.max()) ** beta
    for i in range(len(a)):
        for j in range(len(a)):
            if w[i] > w[j]:
                assert n[i] >= n[j]
    assert alphalora(a, total, beta, rounding="reference").sum() == total


def test_alphalora_rejects_bad_input():
    with pytest.raises(ValueError, match="alpha="):
        alphalora([0.0, 2.0], 4)
    with pytest.raises(ValueError, match="total=1"):
        alphalora([2.0, 3.0], 1)
    with pytest.raises(ValueError, match="rounding='round'"):
        alphalora([2.0, 3.0], 4, rounding="round")
    with pytest.raises(ValueError, match="beta=0"):
        alphalora([2.0, 3.0], 4, beta=0)
