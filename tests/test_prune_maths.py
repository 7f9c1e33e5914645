"""Per-matrix pruning maths against brute-force references (numpy sorts, explicit inverses)."""
import numpy as np
import pytest
import torch

from layerif.prune import magnitude, sparsegpt, wanda


def _rand(rows, cols, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g, dtype=dtype)


def _correlated_inputs(d_in, tokens, seed):
    """Token activations with per-feature scales and a shared low-rank factor."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.exp(torch.randn(d_in, generator=g, dtype=torch.float64))
    mix = torch.eye(d_in, dtype=torch.float64) + torch.randn(d_in, 8, generator=g, dtype=torch.float64) @ \
        torch.randn(8, d_in, generator=g, dtype=torch.float64) / 8 ** 0.5
    return (torch.randn(tokens, d_in, generator=g, dtype=torch.float64) @ mix) * scales


# ----------------------------------------------------------------------------- exact counts
@pytest.mark.parametrize("shape", [(24, 40), (17, 200)])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77])
def test_exact_zero_counts(shape, sparsity):
    rows, cols = shape
    W = _rand(rows, cols, 0)
    X = _correlated_inputs(cols, 300, 1)
    k = int(rows * cols * sparsity)
    assert int((magnitude(W, sparsity) == 0).sum()) == k
    assert int((sparsegpt(W, 2 * X.T @ X, sparsity, blocksize=32) == 0).sum()) == k
    pruned = wanda(W, (X ** 2).sum(0), sparsity)
    per_row = (pruned == 0).sum(1)
    assert per_row.tolist() == [int(cols * sparsity)] * rows


@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.9])
def test_exact_counts_with_ties_and_existing_zeros(sparsity):
    g = torch.Generator().manual_seed(13)
    W = torch.randint(-2, 3, (10, 24), generator=g).double()  # ~1/5 zeros, many equal |w|
    k_row = int(24 * sparsity)
    mag = magnitude(W, sparsity)
    assert int((mag == 0).sum()) == max(int(W.numel() * sparsity), int((W == 0).sum()))
    pruned, kept = W.abs()[(mag == 0) & (W != 0)], W.abs()[mag != 0]
    assert pruned.numel() == 0 or kept.numel() == 0 or pruned.max() <= kept.min()
    wan = wanda(W, torch.ones(24, dtype=W.dtype), sparsity)
    assert ((wan == 0) | (W == 0)).sum(1).tolist() == [max(k_row, int((r == 0).sum())) for r in W]


def test_magnitude_prunes_the_smallest_entries():
    W = _rand(13, 29, 2)
    k = int(W.numel() * 0.4)
    ref = np.argsort(np.abs(W.numpy()).ravel(), kind="stable")[:k]
    pruned = magnitude(W, 0.4)
    assert set(np.flatnonzero(pruned.numpy().ravel() == 0)) == set(ref)
    kept = pruned != 0
    assert torch.equal(pruned[kept], W[kept])


def test_wanda_matches_a_per_row_brute_force():
    W = _rand(11, 37, 3)
    act = torch.rand(37, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 9
    pruned = wanda(W, act, 0.5).numpy()
    scores = np.abs(W.numpy()) * np.sqrt(act.numpy())[None, :]
    for r in range(11):
        lowest = set(np.argsort(scores[r])[: int(37 * 0.5)])
        assert set(np.flatnonzero(pruned[r] == 0)) == lowest


@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (4, 8)])
def test_nm_structure_for_all_three(nm):
    n, m = nm
    W = _rand(16, 64, 5)
    X = _correlated_inputs(64, 200, 6)
    s = n / m
    outs = {
        "magnitude": magnitude(W, s, nm=nm),
        "wanda": wanda(W, (X ** 2).sum(0), s, nm=nm),
        "sparsegpt": sparsegpt(W, 2 * X.T @ X, s, nm=nm, blocksize=32),
    }
    for name, pruned in outs.items():
        zeros_per_group = (pruned == 0).reshape(16, 64 // m, m).sum(-1)
        assert (zeros_per_group == n).all(), name
    # Magnitude's N:M is the n smallest |w| of each group.
    groups = W.abs().reshape(16, -1, m)
    ref = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, groups.argsort(-1)[..., :n], True)
    assert torch.equal(outs["magnitude"].reshape(16, -1, m) == 0, ref)


# ----------------------------------------------------------------------------- sparsegpt
def _sparsegpt_reference(W, H, sparsity, blocksize, percdamp):
    """Sequential OBS with explicit inverses of the trailing Hessians (no Cholesky trick).

    Column c is visited with columns < c frozen; pruning it is compensated by the optimal
    update of the free columns c.. : delta = -w_c * inv(H_F)[0, :] / inv(H_F)[0, 0].
    The mask of each block is the lowest w^2 / inv(H_F)[0, 0] over the block at its start.
    """
    W = W.clone()
    rows, d = W.shape
    H = H + percdamp * H.diagonal().mean() * torch.eye(d, dtype=H.dtype)
    inverses = [torch.linalg.inv(H[c:, c:]) for c in range(d)]
    diag = torch.stack([inv[0, 0] for inv in inverses])
    mask = torch.zeros_like(W, dtype=torch.bool)
    for c in range(d):
        if c % blocksize == 0:
            c2 = min(c + blocksize, d)
            k = int(rows * c2 * sparsity) - int(rows * c * sparsity)
            scores = (W[:, c:c2] ** 2 / diag[c:c2]).flatten()
            block = torch.zeros(scores.numel(), dtype=torch.bool)
            block[np.argsort(scores.numpy(), kind="stable")[:k]] = True
            mask[:, c:c2] = block.view(rows, c2 - c)
        inv = inverses[c]
        removed = torch.where(mask[:, c], W[:, c], torch.zeros_like(W[:, c]))
        W[:, c:] -= removed[:, None] * inv[0][None, :] / inv[0, 0]
    return W


@pytest.mark.parametrize("blocksize", [16, 128])
def test_sparsegpt_matches_explicit_obs(blocksize):
    W = _rand(12, 48, 7)
    X = _correlated_inputs(48, 400, 8)
    H = 2 * X.T @ X / 400
    got = sparsegpt(W, H, 0.6, blocksize=blocksize, percdamp=0.01)
    want = _sparsegpt_reference(W, H, 0.6, blocksize, 0.01)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)
    assert torch.equal(got == 0, want.abs() < 1e-12)


def test_sparsegpt_zeroes_dead_inputs_and_keeps_dtype():
    W = _rand(8, 32, 9, dtype=torch.bfloat16)
    X = _correlated_inputs(32, 100, 10)
    X[:, 5] = 0  # an input that is never active
    out = sparsegpt(W, (2 * X.T @ X).float(), 0.25)
    assert out.dtype == torch.bfloat16
    assert (out[:, 5] == 0).all()
    assert int((out == 0).sum()) == int(8 * 32 * 0.25)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_output_error_order_sparsegpt_wanda_magnitude(sparsity):
    d_out, d_in, tokens = 64, 256, 1024
    W = _rand(d_out, d_in, 11)
    X = _correlated_inputs(d_in, tokens, 12)
    out = X @ W.T

    def err(Wp):
        return float((out - X @ Wp.T).norm() / out.norm())

    e_mag = err(magnitude(W, sparsity))
    e_wanda = err(wanda(W, (X ** 2).sum(0), sparsity))
    e_sgpt = err(sparsegpt(W, 2 * X.T @ X / tokens, sparsity))
    assert e_sgpt < e_wanda < e_mag


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad", [1.0, 1.2, -0.1, float("nan"), "0.5", True])
def test_bad_sparsity_is_rejected(bad):
    W = _rand(4, 8, 0)
    with pytest.raises(ValueError, match="sparsity="):
        magnitude(W, bad)
    with pytest.raises(ValueError, match="sparsity="):
        wanda(W, torch.ones(8, dtype=W.dtype), bad)
    with pytest.raises(ValueError, match="sparsity="):
        sparsegpt(W, torch.eye(8, dtype=W.dtype), bad)


def test_bad_shapes_and_nm_are_rejected():
    W = _rand(4, 10, 0)
    with pytest.raises(ValueError, match="act_sq_norm"):
        wanda(W, torch.ones(9, dtype=W.dtype), 0.5)
    with pytest.raises(ValueError, match="H of shape"):
        sparsegpt(W, torch.eye(9, dtype=W.dtype), 0.5)
    with pytest.raises(ValueError, match="nm="):
        magnitude(W, 0.5, nm=(2, 4))  # 10 columns are not groups of 4
    with pytest.raises(ValueError, match="n/m"):
        magnitude(_rand(4, 8, 0), 0.3, nm=(2, 4))
    with pytest.raises(ValueError, match="W of shape"):
        magnitude(torch.ones(3, 4, 5), 0.5)
