"""layerif.allocate: hand-computed fixtures, the authors' shipped vector, and properties."""
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layerif import allocate as al

SETTINGS = settings(max_examples=150, deadline=None)

# The authors' shipped Mistral-7B vector (normalised |S|, 32 blocks) and its smoothing.
MISTRAL = [0.0, 0.6873, 0.6239, 0.7973, 0.6273, 0.5928, 0.7172, 0.8668, 0.8004, 0.9685,
           0.8682, 0.9335, 1.0, 0.8886, 0.9465, 0.8204, 0.9136, 0.9278, 0.8381, 0.9114,
           0.6531, 0.8611, 0.9333, 0.9411, 0.936, 0.9045, 0.9212, 0.7918, 0.7849, 0.8254,
           0.7898, 0.8395]
MISTRAL_SMOOTH = [0.0328, 0.5723, 0.7624, 0.7378, 0.6498, 0.6838, 0.6919, 0.8031, 0.8723,
                  0.8932, 0.9228, 0.9439, 0.9428, 0.9332, 0.8999, 0.8894, 0.8875, 0.9048,
                  0.8685, 0.8095, 0.7992, 0.836, 0.8801, 0.9501, 0.9468, 0.916, 0.8693,
                  0.8342, 0.802, 0.7901, 0.801, 0.8401]

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
scores_st = st.lists(finite, min_size=1, max_size=40)


# ----------------------------------------------------------------------------- experts

def test_experts_fixtures_from_the_formula():
    # w = (5 - S)^2 = [100, 81, 64, 4, 1, 0], f = w/250*4 = [1.6, 1.296, 1.024, .064, .016, 0]
    # floor+1 = [2,2,2,1,1,1] (9); one left -> largest fraction (layer 0).
    assert al.experts([-5, -4, -3, 3, 4, 5], 10, beta=2).tolist() == [3, 2, 2, 1, 1, 1]
    # w = [0, 1, 4, 9], f = w/14*6 = [0, .43, 1.71, 3.86] -> [1,1,2,4] (8); +1 to 3 and 2.
    assert al.experts([-1, -2, -3, -4], 10, beta=2).tolist() == [1, 1, 3, 5]


def test_experts_keeps_the_block_index_and_types():
    s = pd.Series([-3.0, -1.0, -2.0], index=pd.Index([10, 11, 12]))
    n = al.experts(s, 9, beta=1)
    assert list(n.index) == [10, 11, 12] and n.index.name == "layer"
    assert n.dtype.kind == "i" and n.name == "experts"
    # w = [2, 0, 1] -> f = [4, 0, 2] exactly -> [5, 1, 3]
    assert n.tolist() == [5, 1, 3]


def test_experts_ties_go_to_the_lower_index():
    # w = [1, 1, 1, 0] -> f = 2/3 each of the first three; two extra experts -> layers 0, 1
    assert al.experts([0, 0, 0, 1], 6, beta=1).tolist() == [2, 2, 1, 1]


def test_constant_scores_give_uniform_experts():
    assert al.experts([3.0] * 7, 24).equals(al.uniform_experts(7, 24))
    assert al.uniform_experts(4, 10).tolist() == [3, 3, 2, 2]


@pytest.mark.parametrize("kwargs, match", [
    (dict(scores=[1, 2, 3], total=2), "total=2"),
    (dict(scores=[1, 2, 3], total=5.0), "total=5.0"),
    (dict(scores=[1, 2, 3], total=6, beta=0), "beta=0"),
    (dict(scores=[1, 2, 3], total=6, beta=-1.0), "beta=-1.0"),
    (dict(scores=[1, float("nan"), 3], total=6), "non-finite"),
    (dict(scores=[], total=6), "empty"),
    (dict(scores=pd.Series([1, 2], index=[0, 0]), total=6), "duplicated"),
])
def test_experts_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        al.experts(**kwargs)


@SETTINGS
@given(scores=scores_st, extra=st.integers(0, 200), beta=st.floats(0.1, 6.0))
def test_experts_invariants(scores, extra, beta):
    total = len(scores) + extra
    n = al.experts(scores, total, beta=beta).to_numpy()
    s = np.asarray(scores)
    assert n.sum() == total and (n >= 1).all()
    # independent recomputation of the real-valued shares (in float64)
    gap = s.max() - s
    w = (gap / gap.max()) ** beta if gap.max() > 0 else np.ones(len(s))
    f = w / w.sum() * extra
    assert (np.abs(n - (f + 1)) < 1 + 1e-9).all()
    # monotone: a lower score never gets fewer experts (compared on the float64 weights:
    # scores 1e-180 apart collapse to one weight, and then the lower index wins)
    for i in range(len(s)):
        for j in range(len(s)):
            if w[i] > w[j] or (w[i] == w[j] and i < j):
                assert n[i] >= n[j]
    # largest remainder: every bumped layer's fraction beats every unbumped one's
    frac, bumped = f - np.floor(f), n - (np.floor(f) + 1) == 1
    if bumped.any() and (~bumped).any():
        assert frac[bumped].min() >= frac[~bumped].max() - 1e-9


def test_top_k():
    n = pd.Series([1, 2, 5, 1], index=pd.Index([3, 4, 5, 6], name="layer"))
    k = al.top_k(n)
    assert k.tolist() == [1, 2, 2, 1] and list(k.index) == [3, 4, 5, 6]
    with pytest.raises(ValueError, match="experts="):
        al.top_k([0, 2])
    with pytest.raises(ValueError, match="experts="):
        al.top_k([1.5, 2])


@pytest.mark.parametrize("n_layers, total", [(0, 3), (3, 2), (-1, 4), (2.0, 4)])
def test_uniform_experts_rejects_bad_input(n_layers, total):
    with pytest.raises(ValueError):
        al.uniform_experts(n_layers, total)


# ----------------------------------------------------------------------------- smoothing

def test_savgol_smoothing_of_the_shipped_mistral_vector():
    out = al.smooth_scores(pd.Series(MISTRAL))
    np.testing.assert_allclose(out.to_numpy(), MISTRAL_SMOOTH, atol=1e-4, rtol=0)


def test_short_inputs_shrink_the_window():
    x = np.array([0.3, 0.9, 0.1, 0.7, 0.4])
    # L = 5 -> window 5, cubic: one least-squares cubic through all five points
    cubic = np.polyval(np.polyfit(np.arange(5), x, 3), np.arange(5))
    np.testing.assert_allclose(al.smooth_scores(x).to_numpy(), cubic, atol=1e-12)
    # L = 4 -> window 3, polyorder clipped to 2: an exact fit, i.e. no smoothing
    np.testing.assert_allclose(al.smooth_scores(x[:4]).to_numpy(), x[:4], atol=1e-12)
    np.testing.assert_allclose(al.smooth_scores(x[:1]).to_numpy(), x[:1], atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(window=4), "window=4"), (dict(window=0), "window=0"),
    (dict(polyorder=7), "polyorder=7"), (dict(polyorder=-1), "polyorder=-1"),
])
def test_smoothing_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        al.smooth_scores([0.1, 0.2, 0.3], **kwargs)


# ----------------------------------------------------------------------------- sparsity

def test_sparsity_on_the_mistral_vector_matches_the_paper_formula():
    d = np.full(32, 218_103_808.0)  # Mistral-7B block: 7 matrices, equal in every block
    out = al.sparsity(pd.Series(MISTRAL) * -3.7, 0.5, d, epsilon=0.1)  # sign/scale-free
    sm = np.asarray(MISTRAL_SMOOTH)
    r = (sm - sm.min()) / (sm.max() - sm.min()) * 0.2 + 0.9
    expected = 0.5 * d.sum() / (r * d).sum() * r
    np.testing.assert_allclose(out.to_numpy(), expected, atol=1e-4, rtol=0)
    assert out.index.name == "layer" and out.name == "sparsity"


def test_sparsity_without_smoothing_hand_computed():
    # |S| = [1, 3, 2] -> [0, 1, .5] -> r = [.8, 1.2, 1.0] (eps .2); d = [1, 1, 2]
    # eta = .5 * 4 / (.8 + 1.2 + 2.0) = .5 -> [.4, .6, .5]
    out = al.sparsity([-1, -3, -2], 0.5, [1, 1, 2], epsilon=0.2, smooth=False)
    np.testing.assert_allclose(out.to_numpy(), [0.4, 0.6, 0.5], atol=1e-15)


def test_clipping_redistributes_to_keep_the_target():
    # r = [.5, .5, .5, 1.5], eta = .9*4/3 = 1.2 -> [.6, .6, .6, 1.8]; cap the last at .99,
    # the others share 3.6 - .99 = 2.61 -> .87 each.
    out = al.linear_sparsity([0, 0, 0, 1], 0.9, [1, 1, 1, 1], epsilon=0.5, clip=0.99)
    np.testing.assert_allclose(out.to_numpy(), [0.87, 0.87, 0.87, 0.99], atol=1e-12)
    raw = al.linear_sparsity([0, 0, 0, 1], 0.9, [1, 1, 1, 1], epsilon=0.5, clip=None)
    np.testing.assert_allclose(raw.to_numpy(), [0.6, 0.6, 0.6, 1.8], atol=1e-12)


def test_constant_scores_and_zero_epsilon_give_the_target():
    np.testing.assert_allclose(al.sparsity([2.0] * 5, 0.3, [1, 2, 3, 4, 5]), 0.3)
    np.testing.assert_allclose(al.sparsity([1, 5, 2], 0.3, [1, 2, 3], epsilon=0.0), 0.3)
    assert al.uniform_sparsity(3, 0.4).tolist() == [0.4] * 3


def test_n_params_are_aligned_by_block_index():
    s = pd.Series([1.0, 4.0, 2.0], index=[5, 6, 7])
    d = pd.Series([10.0, 20.0, 30.0], index=[5, 6, 7])
    shuffled = d.iloc[[2, 0, 1]]
    pd.testing.assert_series_equal(al.sparsity(s, 0.5, shuffled, smooth=False),
                                   al.sparsity(s, 0.5, d, smooth=False))
    with pytest.raises(ValueError, match="n_params is indexed by"):
        al.sparsity(s, 0.5, pd.Series([1.0, 1.0, 1.0], index=[0, 1, 2]))
    with pytest.raises(ValueError, match="n_params is indexed by"):
        al.sparsity(s, 0.5, [1.0, 1.0, 1.0])  # a plain list is indexed 0..L-1


@pytest.mark.parametrize("kwargs, match", [
    (dict(target=0.0), "target=0.0"), (dict(target=1.0), "target=1.0"),
    (dict(target=-0.2), "target=-0.2"), (dict(epsilon=1.0), "epsilon=1.0"),
    (dict(epsilon=-0.1), "epsilon=-0.1"), (dict(clip=0.4), "clip=0.4"),
    (dict(target=0.995), r"target=0.995 is invalid with clip=0.99: .* \(lower the target"),
    (dict(clip=1.5), r"clip=1.5 is invalid: expected a float in \(0, 1\]"),
    (dict(n_params=[1, 0, 2]), "non-positive"), (dict(scores=[1, np.inf, 2]), "non-finite"),
])
def test_sparsity_rejects_bad_input(kwargs, match):
    args = dict(scores=[1, 2, 3], target=0.5, n_params=[1, 1, 1]) | kwargs
    with pytest.raises(ValueError, match=match):
        al.sparsity(**args)


sizes = st.integers(1, 10**9).map(float)


@SETTINGS
@given(data=st.data(), n=st.integers(1, 40), target=st.floats(0.01, 0.95),
       eps=st.floats(0.0, 0.99), smooth=st.booleans(), clip=st.sampled_from([0.99, None]))
def test_sparsity_invariants(data, n, target, eps, smooth, clip):
    scores = np.asarray(data.draw(st.lists(finite, min_size=n, max_size=n)))
    d = np.asarray(data.draw(st.lists(sizes, min_size=n, max_size=n)))
    out = al.sparsity(scores, target, d, epsilon=eps, smooth=smooth, clip=clip).to_numpy()
    assert math.isclose((out * d).sum(), target * d.sum(), rel_tol=1e-9)
    assert (out > 0).all()
    if clip is not None:
        assert (out <= clip + 1e-12).all()
    free = out < (clip if clip is not None else np.inf) - 1e-12
    if free.any():
        assert out[free].max() <= out[free].min() * (1 + eps) / (1 - eps) * (1 + 1e-9)
    if not smooth:  # monotone in |S|
        a = np.abs(scores)
        order = np.argsort(a, kind="stable")
        assert (np.diff(out[order]) >= -1e-12).all()


# ----------------------------------------------------------------------------- exports

def test_per_module_and_per_matrix_follow_describe(tiny):
    from layerif.models import describe

    model, _ = tiny
    table = describe(model)
    n = al.experts([-1.0, -4.0, -2.0, -3.0], 12, beta=1)  # w=[0,3,1,2] -> f=[0,4,4/3,8/3]
    assert n.tolist() == [1, 5, 2, 4]
    mods = al.per_module(n, table)
    assert len(mods) == 4 * 7 and all(type(v) is int for v in mods.values())
    assert mods["model.layers.1.self_attn.q_proj"] == 5
    assert mods["model.layers.3.mlp.down_proj"] == 4
    flat = al.per_matrix(n, table)
    assert flat == [1] * 7 + [5] * 7 + [2] * 7 + [4] * 7
    # explicit module names with a Series of block paths
    some = al.per_module(al.uniform_sparsity(4, 0.5), table["path"],
                         modules=["self_attn.v_proj", "mlp.up_proj"])
    assert list(some) == [f"model.layers.{i}.{m}" for i in range(4)
                          for m in ("self_attn.v_proj", "mlp.up_proj")]
    with pytest.raises(ValueError, match="same block indices"):
        al.per_module(al.uniform_sparsity(3, 0.5), table)
    with pytest.raises(ValueError, match="modules=None"):
        al.per_module(n, table["path"])


# ----------------------------------------------------------------------------- per matrix
def _matrix_fixture():
    rng = np.random.default_rng(0)
    modules = ["q", "k", "down"]
    scores = pd.DataFrame(-rng.random((9, 3)), columns=modules).rename_axis("layer")
    sizes = pd.DataFrame({"q": 4, "k": 1, "down": 12}, index=scores.index)
    return scores, sizes


@pytest.mark.parametrize("smooth", [False, True])
def test_matrix_sparsity_meets_the_weighted_target(smooth):
    scores, sizes = _matrix_fixture()
    out = al.matrix_sparsity(scores, 0.6, sizes, epsilon=0.2, smooth=smooth)
    assert out.shape == scores.shape and list(out.columns) == list(scores.columns)
    weighted = (out * sizes).to_numpy().sum() / sizes.to_numpy().sum()
    assert weighted == pytest.approx(0.6, abs=1e-12)
    assert out.to_numpy().max() / out.to_numpy().min() <= 1.2 / 0.8 + 1e-12


def test_matrix_sparsity_without_smoothing_is_the_linear_map_of_abs_scores():
    scores, sizes = _matrix_fixture()
    out = al.matrix_sparsity(scores, 0.5, sizes, epsilon=0.1, smooth=False)
    a = scores.abs().to_numpy()
    r = (a - a.min()) / (a.max() - a.min()) * 0.2 + 0.9
    eta = 0.5 * sizes.to_numpy().sum() / (r * sizes.to_numpy()).sum()
    np.testing.assert_allclose(out.to_numpy(), eta * r, rtol=1e-12)


def test_matrix_sparsity_smooths_each_matrix_type_across_depth():
    scores, sizes = _matrix_fixture()
    out = al.matrix_sparsity(scores, 0.5, sizes, epsilon=0.1, smooth=True)
    a = scores.abs().to_numpy()
    s = (a - a.min()) / (a.max() - a.min())
    from scipy.signal import savgol_filter
    s = savgol_filter(s, 7, 3, axis=0, mode="interp")  # column by column
    r = (s - s.min()) / (s.max() - s.min()) * 0.2 + 0.9
    eta = 0.5 * sizes.to_numpy().sum() / (r * sizes.to_numpy()).sum()
    np.testing.assert_allclose(out.to_numpy(), eta * r, rtol=1e-10)


def test_matrix_sparsity_rejects_misaligned_sizes():
    scores, sizes = _matrix_fixture()
    with pytest.raises(ValueError, match="n_params"):
        al.matrix_sparsity(scores, 0.5, sizes[["k", "q", "down"]])
