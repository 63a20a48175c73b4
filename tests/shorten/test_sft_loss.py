import pytest
import torch
import torch.nn.functional as F

from llmslim.shorten.sft import branch_loss, kl_terms, nucleus_alternatives


def _logp(*probs):
    return torch.log(torch.tensor(probs, dtype=torch.float32))


def test_kl_terms_match_torch_kl_div():
    torch.manual_seed(0)
    logp_ref = torch.log_softmax(torch.randn(3, 50), -1)
    logp_act = torch.log_softmax(torch.randn(3, 50), -1)
    fwd, rev = kl_terms(logp_ref, logp_act)
    # F.kl_div(input=log q, target=log p, log_target=True) = KL(p ‖ q)
    expect_fwd = F.kl_div(logp_act, logp_ref, log_target=True, reduction="none").sum(-1)
    expect_rev = F.kl_div(logp_ref, logp_act, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(fwd, expect_fwd, atol=1e-6)
    assert torch.allclose(rev, expect_rev, atol=1e-6)
    assert not torch.allclose(fwd, rev)  # the two directions differ: both are needed


def test_kl_known_distribution_and_zero_when_equal():
    p, q = _logp(0.5, 0.5), _logp(0.9, 0.1)
    fwd, rev = kl_terms(p, q)
    assert fwd.item() == pytest.approx(0.5 * torch.log(torch.tensor(0.5 / 0.9)).item() + 0.5 * torch.log(torch.tensor(5.0)).item(), rel=1e-5)
    assert rev.item() == pytest.approx(0.9 * torch.log(torch.tensor(1.8)).item() + 0.1 * torch.log(torch.tensor(0.2)).item(), rel=1e-5)
    same, same_rev = kl_terms(q, q)
    assert same.item() == 0.0 and same_rev.item() == 0.0
    with_zero, _ = kl_terms(_logp(1.0, 0.0), _logp(0.5, 0.5))  # 0·log 0 counts as 0
    assert with_zero.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_branch_loss_terms():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    logp_act = torch.log_softmax(logits, -1)
    logp_ref = _logp(0.2, 0.5, 0.3).unsqueeze(0)
    alt = torch.tensor([1])
    ce = -logp_act[0, 1]
    fwd, rev = kl_terms(logp_ref, logp_act)
    for a in (1, -1, 0):
        loss, parts = branch_loss(logits, logp_ref, alt, torch.tensor([a]), 0.1, 0.2)
        assert loss.item() == pytest.approx((0.7 * a * ce + 0.1 * fwd + 0.2 * rev).item(), rel=1e-5)
    # a = +1 lowers the CE of the alternative after one gradient step, a = -1 raises it
    for a, sign in ((1, -1), (-1, 1)):
        x = logits.clone().requires_grad_(True)
        loss, _ = branch_loss(x, logp_ref, alt, torch.tensor([a]), 0.0, 0.0)
        loss.backward()
        stepped = x - 0.5 * x.grad
        new_ce = -torch.log_softmax(stepped, -1)[0, 1]
        assert (new_ce - ce).sign().item() == sign


def test_nucleus_excludes_reference_token():
    logp = _logp(0.5, 0.3, 0.15, 0.05)
    ids, p = nucleus_alternatives(logp, top_p=0.6, exclude=0)
    assert ids.tolist() == [1]  # nucleus {0, 1}; 0 is the reference's own token
    ids, p = nucleus_alternatives(logp, top_p=0.9, exclude=1)
    assert ids.tolist() == [0, 2] and p.sum().item() == pytest.approx(1.0)
    ids, _ = nucleus_alternatives(_logp(0.95, 0.05), top_p=0.9, exclude=0)
    assert ids.numel() == 0
