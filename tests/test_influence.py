"""layerif.influence against explicit Python-loop references in float64."""
import numpy as np
import pytest
import torch

from layerif import influence


pytestmark = pytest.mark.usefixtures("one_thread")


def loop_datainf(train, val, damping=0.1):
    """DataInf written out example by example (numpy, float64): [n_units, n]."""
    out = []
    for g, vs in zip(train, val):
        g, v = g.numpy(), vs.numpy().sum(axis=0)
        n, d = g.shape
        lam = damping * sum(float(np.dot(gi, gi)) for gi in g) / (n * d)
        h = np.zeros(d)
        for gi in g:
            h += v - float(np.dot(v, gi)) / (lam + float(np.dot(gi, gi))) * gi
        h /= n * lam
        out.append([-float(np.dot(h, gk)) for gk in g])
    return np.array(out)


def loop_exact(train, val, damping=0.1):
    """-<(G + lambda I)^-1 v, g_k> with an explicit dense inverse."""
    out = []
    for g, vs in zip(train, val):
        g, v = g.numpy(), vs.numpy().sum(axis=0)
        n, d = g.shape
        lam = damping * float((g ** 2).mean())
        fisher = sum(np.outer(gi, gi) for gi in g) / n
        h = np.linalg.inv(fisher + lam * np.eye(d)) @ v
        out.append([-float(h @ gk) for gk in g])
    return np.array(out)


def stacks(n=7, m=3, dims=(5, 12, 1), seed=0):
    gen = torch.Generator().manual_seed(seed)
    train = [torch.randn(n, d, generator=gen, dtype=torch.float64) * (u + 1) for u, d in enumerate(dims)]
    val = [torch.randn(m, d, generator=gen, dtype=torch.float64) for d in dims]
    return train, val


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


def test_datainf_matches_loop_reference():
    train, val = stacks()
    for damping in (0.1, 0.01, 3.0):
        assert rel_err(influence.datainf(train, val, damping), loop_datainf(train, val, damping)) < 1e-12


def test_hand_computed_single_scalar():
    # n = d = 1, g = 2, v = 3: lambda = 0.1 * 4 = 0.4,
    # IF = -(1/lambda) (3 - 3*2/(0.4+4) * 2) * 2 = -6 / 4.4
    g, v = torch.tensor([[2.0]], dtype=torch.float64), torch.tensor([[3.0]], dtype=torch.float64)
    for fn in (influence.datainf, influence.exact):
        assert fn([g], [v]).item() == pytest.approx(-6 / 4.4, rel=1e-14)
    assert influence.hessian_free([g], [v]).item() == pytest.approx(-6.0)


def test_sign_example_aligned_with_validation_gradient_is_helpful():
    train, val = stacks(n=5, dims=(6,))
    train[0][2] = val[0].sum(dim=0)  # descending on example 2 descends the validation loss
    assert influence.datainf(train, val)[0, 2] < 0
    assert influence.hessian_free(train, val)[0, 2] < 0


def test_validation_rows_are_summed():
    train, val = stacks()
    one = influence.datainf(train, [v.sum(dim=0, keepdim=True) for v in val])
    per_row = sum(influence.datainf(train, [v[j:j + 1] for v in val]) for j in range(3))
    assert rel_err(one, influence.datainf(train, val)) < 1e-13
    assert rel_err(per_row, one) < 1e-12


def test_hessian_free_matches_loop():
    train, val = stacks()
    ref = [[-float(v.sum(0) @ gk) for gk in g] for g, v in zip(train, val)]
    assert rel_err(influence.hessian_free(train, val), ref) < 1e-14


@pytest.mark.parametrize("n", [3, 20])  # Woodbury (n < d) and dense (n >= d) branches
def test_exact_matches_dense_inverse(n):
    train, val = stacks(n=n, dims=(9, 4))
    assert rel_err(influence.exact(train, val, 0.05), loop_exact(train, val, 0.05)) < 1e-10


def test_exact_equals_datainf_with_one_training_example():
    # With n = 1 the Sherman-Morrison step is the exact inverse.
    train, val = stacks(n=1, dims=(8, 3))
    assert rel_err(influence.exact(train, val), influence.datainf(train, val)) < 1e-12


def test_exact_and_datainf_differ_in_general():
    train, val = stacks(n=10, dims=(4,))
    assert rel_err(influence.exact(train, val), influence.datainf(train, val)) > 1e-3


def test_datainf_times_lambda_tends_to_hessian_free():
    train, val = stacks()
    hf = influence.hessian_free(train, val)
    errs = []
    for damping in (1e2, 1e4, 1e6):
        lam = torch.stack([damping * (g ** 2).mean() for g in train])
        errs.append(rel_err(influence.datainf(train, val, damping) * lam[:, None], hf))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-5


def test_groups_equal_concatenated_units():
    train, val = stacks(dims=(5, 12, 1, 3))
    groups = [[0, 2], [1], [3]]
    cat_train = [torch.cat([train[u] for u in g], dim=1) for g in groups]
    cat_val = [torch.cat([val[u] for u in g], dim=1) for g in groups]
    for fn, ref in ((influence.datainf, loop_datainf), (influence.exact, loop_exact)):
        shares = fn(train, val, 0.1, groups=groups)
        summed = np.stack([shares[g].sum(dim=0).numpy() for g in groups])
        assert rel_err(summed, ref(cat_train, cat_val)) < 1e-10


def test_streaming_terms_reproduce_datainf():
    train, val = stacks()
    v = [x.sum(0) for x in val]
    sq = torch.stack([(g * g).sum(1) for g in train])
    v_dots = torch.stack([g @ vu for g, vu in zip(train, v)])
    lam, coef = influence.datainf_terms(sq, v_dots, [g.shape[1] for g in train])
    w_dots = torch.stack([g @ (c @ g) for g, c in zip(train, coef)])
    assert rel_err(influence.datainf_from_dots(v_dots, w_dots, lam), loop_datainf(train, val)) < 1e-12


def test_all_zero_unit_has_zero_influence():
    train, val = stacks(dims=(4, 3))
    train[1] = torch.zeros_like(train[1])
    for fn in (influence.datainf, influence.exact):
        out = fn(train, val)
        assert torch.isfinite(out).all() and (out[1] == 0).all() and (out[0] != 0).all()


def test_float32_stays_float32():
    train, val = stacks()
    out = influence.datainf([g.float() for g in train], [v.float() for v in val])
    assert out.dtype == torch.float32
    assert rel_err(out, loop_datainf(train, val)) < 1e-4


@pytest.mark.parametrize("fn", [influence.datainf, influence.hessian_free, influence.exact])
def test_bad_inputs_raise(fn):
    train, val = stacks(dims=(4, 3))
    bad_nan = [train[0].clone(), train[1]]
    bad_nan[0][1, 2] = float("nan")
    bad_inf = [train[0], val[1].clone()]
    bad_inf[1][0, 0] = float("inf")
    cases = {
        "NaN": (bad_nan, val),
        "NaN or inf": (train, bad_inf),
        "at least one unit": ([], []),
        "one validation stack": (train, val[:1]),
        "empty stack": ([train[0][:0], train[1]], val),
        "d=": ([train[1], train[0]], val),
        "examples": ([train[0], train[1][:3]], val),
        "2-D floating": ([train[0].long(), train[1]], val),
    }
    for message, (t, v) in cases.items():
        with pytest.raises(ValueError, match=message):
            fn(t, v)


def test_bad_damping_groups_and_size_raise():
    train, val = stacks(dims=(4, 3))
    for damping in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="damping"):
            influence.datainf(train, val, damping)
    with pytest.raises(ValueError, match="groups"):
        influence.datainf(train, val, groups=[[0]])
    with pytest.raises(ValueError, match="groups"):
        influence.exact(train, val, groups=[[0, 1], [1]])
    with pytest.raises(ValueError, match="dense 4x4 solve"):
        influence.exact(train, val, max_dim=3)


def realistic_stacks(dims, n=16, m=4, seed=0):
    """float64 stacks shaped like real gradients: a shared direction, a rank-5 part and
    noise, norms spread over examples; with ``damping=2.5e-3`` and ``d = 4000`` per Hessian
    block, ``|g|^2 / (n lambda) = 1e5`` while the Gram ``n lambda I + G G^T`` has a
    condition number of about 30 (the regime of SmolLM2's attention weights)."""
    gen = torch.Generator().manual_seed(seed)
    d = sum(dims)
    basis = torch.randn(5, d, generator=gen, dtype=torch.float64)
    scale = torch.tensor([3.0, 1.5, 1.0, 0.7, 0.5], dtype=torch.float64)
    coef = torch.randn(n + m, 5, generator=gen, dtype=torch.float64) * scale
    coef[:, 0] += 1.0
    g = coef @ basis + 3.0 * torch.randn(n + m, d, generator=gen, dtype=torch.float64)
    g = g * torch.exp(0.1 * torch.randn(n + m, 1, generator=gen, dtype=torch.float64))
    return list(g[:n].split(dims, dim=1)), list(g[n:].split(dims, dim=1))


def mp_exact(train, val, damping, groups):
    """Reference shares ``-(b_u - K_u x) / lambda`` (Woodbury, ``x = M^-1 sum_u b_u``).

    ``K_u = G_u G_u^T`` and ``b_u = G_u v_u`` are formed in float64 (products of float32
    inputs are exact there); the n x n solve and the subtraction, where the textbook form
    cancels, run in 200-bit mpmath. The result is well conditioned in K and b (condition
    number of M), so the float64 rounding of the Grams does not limit it.
    """
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.prec = 200
    n = train[0].shape[0]
    out = np.zeros((len(train), n))
    for group in groups:
        g = [train[u].double() for u in group]
        v = [val[u].double().sum(dim=0) for u in group]
        lam = damping * sum(float((t * t).sum()) for t in g) / (n * sum(t.shape[1] for t in g))
        grams = [mpmath.matrix((t @ t.T).tolist()) for t in g]
        rhs = [mpmath.matrix((t @ vu).tolist()) for t, vu in zip(g, v)]
        x = mpmath.lu_solve(sum(grams[1:], grams[0]) + n * mpmath.mpf(lam) * mpmath.eye(n),
                            sum(rhs[1:], rhs[0]))
        for u, gram, b in zip(group, grams, rhs):
            share = -(b - gram * x) / lam
            out[u] = [float(share[i]) for i in range(n)]
    return out


@pytest.mark.parametrize("dims", [[4000], [1500, 2500]])
def test_exact_is_accurate_in_float32_at_realistic_scale(dims):
    train, val = realistic_stacks(dims)
    # float32 stacks: the Grams and the solve run in float64 all the same (float32 products
    # are exact there), so both dtypes agree with the 200-bit reference on their own inputs.
    for dtype in (torch.float32, torch.float64):
        t, v = [g.to(dtype) for g in train], [g.to(dtype) for g in val]
        ref = mp_exact(t, v, 2.5e-3, [[u] for u in range(len(dims))])
        got = influence.exact(t, v, 2.5e-3)
        assert got.dtype == torch.float64
        assert rel_err(got, ref) < 1e-10, dtype


def test_exact_group_shares_are_accurate_at_realistic_scale():
    # One 4000-parameter block split into three units, plus a lone unit.
    train, val = realistic_stacks([1000, 1200, 1800, 4000])
    groups = [[0, 1, 2], [3]]
    for dtype in (torch.float32, torch.float64):
        t, v = [g.to(dtype) for g in train], [g.to(dtype) for g in val]
        ref = mp_exact(t, v, 2.5e-3, groups)
        got = influence.exact(t, v, 2.5e-3, groups=groups)
        assert rel_err(got, ref) < 1e-10, dtype
        assert rel_err(got[3:], ref[3:]) < 1e-10, dtype  # the lone unit on its own scale
    # float64 group totals (shares summed; they cancel by |g|^2 / (n lambda) at most)
    totals = np.stack([got[g].sum(dim=0).numpy() for g in groups])
    assert rel_err(totals, np.stack([ref[g].sum(axis=0) for g in groups])) < 1e-8


# ------------------------------------------------- exact in float32: nearly collinear examples
def _collinear_float32(n=12, d=2000, m=3, eps=1e-3, seed=0):
    """float32 stacks of rank-3 gradients where examples 0, 1 are identical and 2 differs
    from them by ``eps``: ``M = n lambda I + G G^T`` is nearly singular on their span."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(3, d, generator=gen, dtype=torch.float64)
    g = torch.randn(n, 3, generator=gen, dtype=torch.float64) @ base
    g = g + eps * torch.randn(n, d, generator=gen, dtype=torch.float64)
    g[1] = g[0]
    g[2] = g[0] + eps * torch.randn(d, generator=gen, dtype=torch.float64)
    v = torch.randn(m, d, generator=gen, dtype=torch.float64) + base[0]
    return g.float(), v.float()


def _dense_float64(g, v, damping):
    """The textbook ``-G (G^T G / n + lambda I)^-1 v`` in numpy float64 on the upcast
    gradients (a d x d solve: independent of the n x n route exact() takes)."""
    G, V = g.double().numpy(), v.double().numpy().sum(axis=0)
    n, d = G.shape
    lam = damping * (G * G).sum() / (n * d)
    return -(G @ np.linalg.solve(G.T @ G / n + lam * np.eye(d), V))


@pytest.mark.parametrize("eps", [1e-2, 1e-4])
def test_exact_on_nearly_collinear_float32_gradients_matches_float64_reference(eps):
    # Before the float64 Gram and solve, float32 stacks gave 6e-4 here (and 6e-6 between the twins).
    g, v = _collinear_float32(eps=eps)
    got = influence.exact([g], [v], 0.1)
    assert got.dtype == torch.float64
    assert rel_err(got[0], _dense_float64(g, v, 0.1)) < 1e-8
    assert abs(got[0, 0] - got[0, 1]) <= 1e-12 * got.abs().max()  # identical examples


def test_exact_scores_identical_examples_equally_in_a_float32_model(tiny):
    # Same text, same padding (include_pads pads every example to max_length): the same
    # per-example gradient, so the same influence; float32 Grams solved in float32 differed
    # by 1e-3 of a unit's largest score.
    from layerif import ScoreConfig, layer_scores
    from layerif.data import load_task

    model, tok = tiny
    text = [e.text for e in load_task("mrpc", "train", n=4)]
    train = [text[0], text[1], text[0], text[2], text[3], text[0]]
    val = [e.text for e in load_task("mrpc", "validation", n=3)]
    config = ScoreConfig(method="exact", device="cpu", max_length=48, batch_size=6,
                         include_pads=True)
    values = layer_scores(model, tok, train, val, config, progress=False).values
    assert next(model.parameters()).dtype == torch.float32
    scale = values.abs().max(dim=1).values
    for twin in (2, 5):
        assert float(((values[:, 0] - values[:, twin]).abs() / scale).max()) <= 1e-6
