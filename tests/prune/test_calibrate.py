import torch

from llmslim.prune.calibrate import _mean_singular_value, _wide_singular_values


def test_wide_singular_values_equal_float64_svd():
    rows = torch.randn(3, 5000, generator=torch.Generator().manual_seed(0))
    got = _wide_singular_values(rows).sort(descending=True).values
    torch.testing.assert_close(got, torch.linalg.svdvals(rows.double()), rtol=1e-10, atol=0)
    one = torch.randn(1, 10000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_wide_singular_values(one), one.double().norm().reshape(1), rtol=1e-12, atol=0)


def test_wide_singular_values_carry_the_svd_gradient():
    # ReFer's scores are gradients of these features: the Gram route must differentiate like the SVD
    rows = torch.randn(2, 300, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a, b = rows.clone().requires_grad_(), rows.clone().requires_grad_()
    _wide_singular_values(a).mean().backward()
    torch.linalg.svdvals(b).mean().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-12)


def test_flat_feature_is_mean_singular_value_of_batch_rows():
    y = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(3))  # batch x tokens x features
    want = torch.linalg.svdvals(y.double().reshape(2, -1)).mean()
    torch.testing.assert_close(_mean_singular_value(y, "flat").double(), want, rtol=1e-6, atol=0)


def test_wide_singular_values_of_a_tall_matrix_are_min_m_n():
    tall = torch.randn(7, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    got = _wide_singular_values(tall).sort(descending=True).values
    torch.testing.assert_close(got, torch.linalg.svdvals(tall), rtol=1e-10, atol=1e-12)


def test_a_zero_singular_value_gives_a_finite_gradient():
    # an all-zero projection output, and two identical rows (rank 1): sqrt'(0) must not make NaN
    zero = torch.zeros(1, 10, dtype=torch.float64, requires_grad=True)
    _wide_singular_values(zero).mean().backward()
    assert torch.equal(zero.grad, torch.zeros_like(zero))
    row = torch.randn(1, 10, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    twins = row.repeat(2, 1).requires_grad_()
    _wide_singular_values(twins).sum().backward()
    assert torch.isfinite(twins.grad).all()
    # the one nonzero singular value is sqrt(2) |row|; its gradient, split between the twins
    torch.testing.assert_close(twins.grad, (row / row.norm() / 2 ** 0.5).repeat(2, 1), rtol=1e-8, atol=1e-10)
