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
