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


# ----------------------------------------------------------------------------- ties="reference"
def test_magnitude_ties_at_the_cut_exact_vs_reference():
    # 20 weights, s = 0.5 -> k = 10; |w| sorted: six 1s (0..5), eight 2s (6..13), six 3s.
    mags = torch.tensor([1.0] * 6 + [2.0] * 8 + [3.0] * 6, dtype=torch.float64)
    order = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    signs = torch.where(torch.arange(20) % 3 == 0, -1.0, 1.0).double()
    W = (mags[order] * signs).view(4, 5)
    exact = magnitude(W, 0.5)
    reference = magnitude(W, 0.5, ties="reference")
    # exact: exactly int(20 * 0.5) = 10: all the 1s, then the 2s by position
    assert int((exact == 0).sum()) == 10
    flat = W.abs().flatten()
    twos = torch.nonzero(flat == 2).flatten()[:4]
    want = (flat == 1).clone()
    want[twos] = True
    assert torch.equal((exact == 0).flatten(), want)
    # reference: thresh = sort(|W|)[10] = 2, every |w| <= 2 pruned: 14 > 10
    assert torch.equal(reference == 0, W.abs() <= 2)
    assert int((reference == 0).sum()) == 14
    # without ties the reference prunes int(numel * s) + 1
    V = _rand(7, 9, 21)
    assert int((magnitude(V, 0.4, ties="reference") == 0).sum()) == int(63 * 0.4) + 1
    assert int((magnitude(V, 0.4) == 0).sum()) == int(63 * 0.4)
    # both prune nothing at sparsity 0; N:M is unaffected by ties
    assert torch.equal(magnitude(V, 0.0, ties="reference"), V)
    U = _rand(4, 8, 22)
    assert torch.equal(magnitude(U, 0.5, nm=(2, 4), ties="reference"), magnitude(U, 0.5, nm=(2, 4)))


def _published_sparsegpt(W, H, sparsity, blocksize, percdamp):
    """The published one-block rule, written out from its description (not the package's code).

    U is the upper Cholesky factor of (H + damp I)^-1 (explicit inverse here). For each block
    of ``blocksize`` columns, on the weights as updated so far: tmp = w^2 / U_cc^2, thresh =
    the entry at index int(tmp.numel() * s) of the ascending numpy sort, mask = tmp <= thresh.
    Then the columns are swept one by one: err = w_c * mask_c / U_cc, and err * U[c, c:] is
    subtracted from the columns c.. (OBS compensation through the row of U).
    """
    W = W.clone()
    rows, d = W.shape
    Hd = H + percdamp * H.diagonal().mean() * torch.eye(d, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.linalg.inv(Hd), upper=True)
    mask = torch.zeros_like(W, dtype=torch.bool)
    for c in range(d):
        if c % blocksize == 0:
            c2 = min(c + blocksize, d)
            tmp = (W[:, c:c2] ** 2 / U.diagonal()[c:c2] ** 2).numpy()
            thresh = np.sort(tmp, axis=None)[int(tmp.size * sparsity)]
            mask[:, c:c2] = torch.from_numpy(tmp <= thresh)
        err = torch.where(mask[:, c], W[:, c], torch.zeros_like(W[:, c])) / U[c, c]
        W[:, c:] -= err[:, None] * U[c, c:][None, :]
    W[mask] = 0
    return W, mask


def test_sparsegpt_reference_rule_prunes_every_tie_in_a_block():
    # H = 2 I: U is diagonal and equal, so the scores are w^2 times one constant and the
    # integer weights tie massively at the cut.
    g = torch.Generator().manual_seed(31)
    W = torch.randint(-3, 4, (8, 16), generator=g).double()
    H = 2 * torch.eye(16, dtype=torch.float64)
    s = 0.5
    got = sparsegpt(W, H, s, blocksize=16, ties="reference")
    want, mask = _published_sparsegpt(W, H, s, 16, 0.01)
    assert torch.equal(got == 0, mask)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    k = int(W.numel() * s)
    assert int(mask.sum()) > k + 1  # ties at the cut: more than one extra
    exact = sparsegpt(W, H, s, blocksize=16)
    assert int((exact == 0).sum()) == k


@pytest.mark.parametrize("blocksize", [16, 48])
def test_sparsegpt_reference_rule_matches_the_published_one_block_rule(blocksize):
    W = _rand(12, 48, 23)
    X = _correlated_inputs(48, 400, 24)
    H = 2 * X.T @ X / 400
    s = 0.6
    got = sparsegpt(W, H, s, blocksize=blocksize, percdamp=0.01, ties="reference")
    want, mask = _published_sparsegpt(W, H, s, blocksize, 0.01)
    assert torch.equal(got == 0, mask)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)
    n_blocks = 48 // blocksize
    per_block = int(12 * blocksize * s) + 1  # no ties in float weights: one extra per block
    assert int(mask.sum()) == n_blocks * per_block > int(W.numel() * s)
    assert int((sparsegpt(W, H, s, blocksize=blocksize) == 0).sum()) == int(W.numel() * s)


def test_bad_ties_are_rejected():
    W = _rand(4, 8, 0)
    with pytest.raises(ValueError, match="ties='loose' is invalid"):
        magnitude(W, 0.5, ties="loose")
    with pytest.raises(ValueError, match="ties=None is invalid"):
        sparsegpt(W, torch.eye(8, dtype=W.dtype), 0.5, ties=None)


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
