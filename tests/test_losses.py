"""Every loss against its textbook formula (float64, written plainly here), its properties, gradcheck,
extreme logits under bf16 autocast, start-up validation, and the YAML registry."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from runner.errors import ConfigError
from runner.losses import build_loss
from runner.losses.ce import CrossEntropy
from runner.losses.cs import CauchySchwarz
from runner.losses.fdiv import (KL, Alpha, ChiSquare, FDivergence, Hellinger, JensenShannon, ReverseKL,
                                TotalVariation)
from runner.losses.robust import LDR, CompSum, ZLoss
from runner.losses.sinkhorn import Sinkhorn
from runner.validate import problems_of

from conftest import compose

LOSS_NAMES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "loss").glob("*.yaml"))
N, K = 6, 5


def dists(seed: int = 0, n: int = N, k: int = K):
    """Two random full-support distributions as float64 (q, p) and p's logits."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=gen, dtype=torch.float64) * 1.5
    q = torch.softmax(torch.randn(n, k, generator=gen, dtype=torch.float64) * 1.5, -1)
    return q, torch.softmax(logits, -1), logits


def div(loss, q, p):
    return loss.divergence(q.log(), p.log())


# ---- textbook formulas ---------------------------------------------------------------------------------
def kl_ref(a, b):
    return (a * (a / b).log()).sum(-1)


TEXTBOOK = {
    "kl": (KL(), lambda q, p: kl_ref(q, p)),
    "rkl": (ReverseKL(smoothing=0.1), lambda q, p: kl_ref(p, q)),
    "js": (JensenShannon(pi=0.3), lambda q, p: 0.3 * kl_ref(q, 0.3 * q + 0.7 * p) + 0.7 * kl_ref(p, 0.3 * q + 0.7 * p)),
    "js_normalized": (JensenShannon(pi=0.3, normalize=True),
                      lambda q, p: (0.3 * kl_ref(q, 0.3 * q + 0.7 * p) + 0.7 * kl_ref(p, 0.3 * q + 0.7 * p))
                      / (-0.7 * math.log(0.7))),
    "tv": (TotalVariation(), lambda q, p: 0.5 * (q - p).abs().sum(-1)),
    "hellinger": (Hellinger(), lambda q, p: 0.5 * ((q.sqrt() - p.sqrt()) ** 2).sum(-1)),
    "pearson": (ChiSquare(), lambda q, p: ((q - p) ** 2 / p).sum(-1)),
    "neyman": (ChiSquare(form="neyman", smoothing=0.1), lambda q, p: ((q - p) ** 2 / q).sum(-1)),
    "cs": (CauchySchwarz(), lambda q, p: -((q * p).sum(-1) / (q.norm(dim=-1) * p.norm(dim=-1))).log()),
    "ce": (CrossEntropy(), lambda q, p: -(q * p.log()).sum(-1)),
    **{f"alpha_{a}": (Alpha(alpha=a, smoothing=0.1 if a <= 0 else 0.0),
                      lambda q, p, a=a: (1 - (q ** a * p ** (1 - a)).sum(-1)) / (a * (1 - a)))
       for a in (0.5, 0.3, 2.0, -1.0, 3.0)},
}
GENERATORS = {
    "kl": lambda t: t * t.log(), "reverse_kl": lambda t: -t.log(), "jeffreys": lambda t: (t - 1) * t.log(),
    "jensen_shannon": lambda t: 0.5 * (t * t.log() - (t + 1) * ((t + 1) / 2).log()),
    "total_variation": lambda t: 0.5 * (t - 1).abs(), "hellinger": lambda t: 0.5 * (t.sqrt() - 1) ** 2,
    "pearson": lambda t: (t - 1) ** 2, "neyman": lambda t: (t - 1) ** 2 / t, "triangular": lambda t: (t - 1) ** 2 / (t + 1),
}


@pytest.mark.parametrize("name", sorted(TEXTBOOK))
def test_divergence_matches_textbook_formula(name):
    loss, formula = TEXTBOOK[name]
    for seed in range(3):
        q, p, _ = dists(seed)
        torch.testing.assert_close(div(loss, q, p), formula(q, p), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("generator", sorted(GENERATORS))
def test_fdiv_generator_matches_sum_p_f_of_ratio(generator):
    loss = FDivergence(generator=generator, smoothing=0.1)
    q, p, _ = dists(1)
    torch.testing.assert_close(div(loss, q, p), (p * GENERATORS[generator](q / p)).sum(-1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("generator,closed_form", [("kl", KL()), ("reverse_kl", ReverseKL(smoothing=0.1)),
                                                   ("jensen_shannon", JensenShannon()), ("total_variation", TotalVariation()),
                                                   ("hellinger", Hellinger()), ("pearson", ChiSquare())])
def test_fdiv_generator_equals_closed_form_member_on_one_hot_targets_too(generator, closed_form):
    loss = FDivergence(generator=generator, smoothing=0.1)
    q, p, _ = dists(2)
    torch.testing.assert_close(div(loss, q, p), div(closed_form, q, p), rtol=1e-9, atol=1e-12)
    if generator not in ("reverse_kl",):  # one-hot q: the clipped ratio reproduces f(0) terms
        one_hot = F.one_hot(torch.arange(N) % K, K).double()
        torch.testing.assert_close(FDivergence(generator=generator).divergence(one_hot.log(), p.log()),
                                   closed_form.divergence(one_hot.log(), p.log()), rtol=1e-6, atol=1e-7)


def test_ce_matches_torch_for_indices_and_probabilities_with_smoothing():
    _, _, logits = dists(3)
    labels = torch.arange(N) % K
    for smoothing in (0.0, 0.2):
        loss = CrossEntropy(smoothing=smoothing)
        torch.testing.assert_close(loss(logits, labels), F.cross_entropy(logits, labels, label_smoothing=smoothing))
        q = (1 - smoothing) * F.one_hot(labels, K).double() + smoothing / K
        torch.testing.assert_close(loss(logits, labels), -(q * logits.log_softmax(-1)).sum(-1).mean())
        # the fast path and the divergence path agree
        torch.testing.assert_close(loss(logits, labels), loss.divergence(loss.log_target(labels, K), logits.log_softmax(-1)).mean())


def test_kl_and_ce_differ_by_the_target_entropy():
    q, p, logits = dists(4)
    entropy = -(q * q.log()).sum(-1).mean()
    torch.testing.assert_close(CrossEntropy()(logits, q) - KL()(logits, q), entropy)


def test_temperature_divides_the_logits_and_z_reg_adds_the_log_partition_penalty():
    q, _, logits = dists(5)
    logits = logits + 3.0  # a non-zero log-partition
    loss = KL(temperature=2.0, z_reg=1e-2)
    expected = kl_ref(q, torch.softmax(logits / 2, -1)).mean() + 1e-2 * torch.logsumexp(logits, -1).pow(2).mean()
    torch.testing.assert_close(loss(logits, q), expected)


def comp_sum_reference(logits, labels, tau):
    """Mao et al.'s definition: Phi_tau(sum_{k != y} exp(h_k - h_y))."""
    h_y = logits.gather(1, labels[:, None])
    u = (logits - h_y).exp().sum(-1) - 1
    return torch.log1p(u) if tau == 1 else ((1 + u) ** (1 - tau) - 1) / (1 - tau)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 1.7, 2.0])
def test_comp_sum_matches_its_definition(tau):
    _, _, logits = dists(6)
    labels = torch.arange(N) % K
    torch.testing.assert_close(CompSum(tau=tau)(logits, labels), comp_sum_reference(logits, labels, tau).mean())


def test_comp_sum_members_are_cross_entropy_gce_and_mae():
    _, p, logits = dists(7)
    labels = torch.arange(N) % K
    p_y = p.gather(1, labels[:, None]).squeeze(1)
    torch.testing.assert_close(CompSum(tau=1.0)(logits, labels), F.cross_entropy(logits, labels))
    torch.testing.assert_close(CompSum(tau=1.7)(logits, labels), ((1 - p_y ** 0.7) / 0.7).mean())  # GCE q=0.7
    torch.testing.assert_close(CompSum(tau=2.0)(logits, labels), (1 - p_y).mean())  # MAE
    torch.testing.assert_close(compose("loss=gce").loss.tau, 1.7)
    torch.testing.assert_close(compose("loss=mae").loss.tau, 2.0)


def test_z_loss_matches_its_definition_and_is_shift_and_scale_invariant():
    _, _, logits = dists(8)
    labels = torch.arange(N) % K
    z = (logits - logits.mean(-1, keepdim=True)) / logits.std(-1, unbiased=False, keepdim=True)
    a, b = 0.7, 1.5
    expected = (torch.log1p(torch.exp(a * (b - z.gather(1, labels[:, None])))) / a).mean()
    loss = ZLoss(a=a, b=b)
    torch.testing.assert_close(loss(logits, labels), expected)
    torch.testing.assert_close(loss(3.0 * logits - 7.0, labels), expected)


def ldr_reference(logits, labels, lam, margin):
    s = logits - logits.mean(-1, keepdim=True)
    s = s / s.abs().mean(-1, keepdim=True)
    d = margin * (1 - F.one_hot(labels, logits.shape[-1]).double()) + s - s.gather(1, labels[:, None])
    return d, lam * (d / lam).exp().mean(-1).log()


def test_ldr_kl_matches_its_closed_form():
    _, _, logits = dists(9)
    labels = torch.arange(N) % K
    _, expected = ldr_reference(logits, labels, lam=2.0, margin=0.3)
    torch.testing.assert_close(LDR(lam=2.0, alpha=None, margin=0.3)(logits, labels), expected.mean())


def test_aldr_kl_uses_the_converged_per_instance_lambda_of_the_official_update():
    _, _, logits = dists(10)
    labels = torch.arange(N) % K
    lam0, alpha, log_k = 2.0, 2.0, math.log(K)
    d, _ = ldr_reference(logits, labels, lam=lam0, margin=0.1)
    lam = torch.full((N,), lam0, dtype=torch.float64)
    for _ in range(500):  # the official update lam = lam0 - lam0 KL(p_lam, U) / (alpha log K), to convergence
        w = torch.softmax(d / lam[:, None], -1)
        lam = lam0 - lam0 * (w * (K * w).log()).sum(-1) / (alpha * log_k)
    expected = lam * (d / lam[:, None]).exp().mean(-1).log() - alpha * log_k / (2 * lam0) * (lam - lam0) ** 2
    loss = LDR(lam=lam0, alpha=alpha, iters=50)
    torch.testing.assert_close(loss(logits, labels), expected.mean())
    assert (lam < lam0).all() and (lam > lam0 * (1 - 1 / alpha)).all()
    # the default 10 iterations are already converged to float32 precision on typical scores
    torch.testing.assert_close(LDR(lam=lam0, alpha=alpha)(logits.float(), labels), expected.mean().float(), rtol=1e-4, atol=1e-5)


# ---- properties ------------------------------------------------------------------------------------------
PROPERTY_LOSSES = {n: loss for n, (loss, _) in TEXTBOOK.items() if n != "ce"} | {
    f"fdiv_{g}": FDivergence(generator=g, smoothing=0.1) for g in GENERATORS} | {
    "sinkhorn": Sinkhorn(eps=0.05, iters=200), "sinkhorn_ordinal": Sinkhorn(cost="ordinal", eps=0.05, iters=200)}


@pytest.mark.parametrize("name", sorted(PROPERTY_LOSSES))
def test_zero_at_q_equals_p_and_non_negative(name):
    loss = PROPERTY_LOSSES[name]
    q, p, _ = dists(11, n=32)
    at_self = div(loss, p, p)
    tolerance = 5e-2 if name.startswith("sinkhorn") else 1e-12  # entropic OT is not exactly 0 at q = p
    assert at_self.abs().max() <= tolerance
    assert (div(loss, q, p) >= -1e-12).all()


def test_js_is_symmetric_at_one_half_and_bounded_by_log_2():
    js = JensenShannon(pi=0.5)
    q, p, _ = dists(12, n=64)
    torch.testing.assert_close(div(js, q, p), div(js, p, q))
    disjoint_q, disjoint_p = torch.tensor([[1.0, 1e-300]], dtype=torch.float64), torch.tensor([[1e-300, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(div(js, disjoint_q, disjoint_p), torch.tensor([math.log(2)], dtype=torch.float64))
    assert (div(js, q, p) <= math.log(2)).all()


def test_tv_is_at_most_one():
    q, p, _ = dists(13, n=64)
    sharp = torch.softmax(torch.randn(64, K, dtype=torch.float64) * 30, -1)
    assert (div(TotalVariation(), q, p) <= 1).all() and (div(TotalVariation(), sharp, sharp.roll(1, 0)) <= 1 + 1e-12).all()


def test_alpha_divergence_limits_are_kl_and_reverse_kl():
    q, p, _ = dists(14)
    torch.testing.assert_close(div(Alpha(alpha=1 - 1e-7), q, p), kl_ref(q, p), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(div(Alpha(alpha=1e-7), q, p), kl_ref(p, q), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(div(Alpha(alpha=1.0), q, p), kl_ref(q, p))
    torch.testing.assert_close(div(Alpha(alpha=0.0, smoothing=0.1), q, p), kl_ref(p, q))
    torch.testing.assert_close(div(Alpha(alpha=0.5), q, p), 4 * div(Hellinger(), q, p))


def test_cauchy_schwarz_is_scale_invariant():
    q, p, _ = dists(15)
    cs = CauchySchwarz()
    torch.testing.assert_close(cs.divergence(q.log() + 3.0, p.log() - 5.0), div(cs, q, p))
    parallel = torch.rand(N, K, dtype=torch.float64)
    assert cs.divergence((2 * parallel).log(), parallel.log()).abs().max() < 1e-12


# ---- Sinkhorn against exact optimal transport ------------------------------------------------------------
def test_sinkhorn_sample_form_converges_to_exact_ot_with_small_eps():
    q, p, _ = dists(16)
    tv = 0.5 * (q - p).abs().sum(-1)  # exact OT under the 0-1 cost
    w1 = (q.cumsum(-1) - p.cumsum(-1)).abs().sum(-1)  # exact OT under |i - j| on a line
    torch.testing.assert_close(div(Sinkhorn(eps=2e-3, iters=3000), q, p), tv, rtol=0, atol=5e-3)
    torch.testing.assert_close(div(Sinkhorn(cost="ordinal", eps=1e-2, iters=5000), q, p), w1, rtol=0, atol=1e-6)


def test_sinkhorn_batch_form_matches_brute_force_assignment():
    n = 5
    q, p, _ = dists(17, n=n)
    cost = (p[:, None, :] - q[None, :, :]).abs().sum(-1)
    exact = min(sum(cost[i, j] for i, j in enumerate(perm)) for perm in itertools.permutations(range(n))) / n
    value = Sinkhorn(form="batch", eps=2e-3, iters=3000).divergence(q.log(), p.log()).mean()
    assert abs(value.item() - exact.item()) < 5e-3
    assert value.item() >= exact.item() - 1e-9  # <P, C> of a feasible plan is never below the optimum


def test_sinkhorn_with_one_hot_target_is_the_expected_cost_for_any_eps_and_tol_stops_early():
    _, p, _ = dists(18)
    labels = torch.arange(N) % K
    one_hot = F.one_hot(labels, K).double()
    for eps in (0.05, 1.0):
        torch.testing.assert_close(Sinkhorn(eps=eps, iters=50).divergence(one_hot.log(), p.log()),
                                   1 - p.gather(1, labels[:, None]).squeeze(1))
    q, p, _ = dists(19)
    fixed = div(Sinkhorn(eps=0.1, iters=2000), q, p)
    torch.testing.assert_close(div(Sinkhorn(eps=0.1, iters=2000, tol=1e-10), q, p), fixed, rtol=1e-8, atol=1e-9)


# ---- gradients and numerics ------------------------------------------------------------------------------
def built(name: str, **overrides):
    cfg = compose(f"loss={name}").loss
    return build_loss(OmegaConf.merge(cfg, overrides))


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_gradcheck(name):
    loss = built(name, iters=30) if name == "sinkhorn" else built(name)
    q, _, logits = dists(20, n=4, k=4)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, q), (logits,))
    assert torch.autograd.gradcheck(lambda x: loss(x, torch.arange(4) % 4), (logits,))


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("target_kind", ["labels", "probabilities"])
def test_finite_for_extreme_logits_under_bf16_autocast(name, target_kind):
    loss = built(name, z_reg=1e-4)
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(16, 10, generator=gen) * 1e3).requires_grad_(True)
    features = torch.randn(32, 16, generator=gen)
    labels = torch.arange(32) % 10
    target = labels if target_kind == "labels" else torch.softmax(torch.randn(32, 10, generator=gen) * 5, -1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = features @ weight  # bf16 logits of magnitude ~1e4
        assert logits.dtype == torch.bfloat16 and logits.abs().max() > 1e4
        value = loss(logits, target)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert torch.isfinite(weight.grad).all()


# ---- configuration ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,overrides,key", [
    ("rkl", {"smoothing": 0.0}, "loss.smoothing"), ("chi2", {"smoothing": 0.0}, "loss.smoothing"),
    ("alpha", {"alpha": -0.5}, "loss.smoothing"), ("fdiv", {"smoothing": 0.0}, "loss.smoothing"),
    ("fdiv", {"generator": "nope"}, "loss.generator"), ("js", {"pi": 1.0}, "loss.pi"), ("ce", {"temperature": 0}, "loss.temperature"),
    ("sinkhorn", {"form": "pairwise"}, "loss.form"), ("compsum", {"tau": -1}, "loss.tau"), ("ldr", {"alpha": 1.0}, "loss.alpha"),
])
def test_bad_settings_fail_at_start_up_with_a_one_line_fix(name, overrides, key):
    """Checked with the whole config before anything is written; the smoothing ones are label rules (below),
    the others the constructor's own, which also refuses them in code."""
    found = list(problems_of(compose(f"loss={name}", *(f"loss.{k}={v}" for k, v in overrides.items()))))
    assert len(found) == 1 and key in found[0] and "\n" not in found[0]
    if key != "loss.smoothing":
        with pytest.raises(ConfigError) as error:
            built(name, **overrides)
        assert key in str(error.value) and "\n" not in str(error.value)


FULL_SUPPORT = [("rkl", {}, "reverse KL"), ("chi2", {}, "Neyman chi^2"),
                ("alpha", {"alpha": -0.5}, "the alpha-divergence with alpha=-0.5 <= 0"),
                ("fdiv", {}, "the f-divergence with generator jeffreys (f(0) is infinite)")]


@pytest.mark.parametrize("name,overrides,what", FULL_SUPPORT)
def test_full_support_divergences_refuse_unsmoothed_labels_only(name, overrides, what):
    """One-hot labels meet a divergence that needs q > 0 in plain training and in pskd/saf/mesa: refused with
    the one-line fix. A teacher's probabilities (kd, nd, dml; bdkd and dhkd use their own terms) need no
    smoothing: accepted, and the loss built with smoothing 0 takes probabilities."""
    settings = [f"loss={name}", "loss.smoothing=0", *(f"loss.{k}={v}" for k, v in overrides.items())]
    message = (f"loss.smoothing=0: {what} needs q > 0 wherever p > 0, which one-hot labels break; "
               f"set loss.smoothing > 0 (e.g. loss.smoothing=0.1)")
    for method in ("none", "pskd", "saf", "mesa"):
        assert list(problems_of(compose(*settings, f"distill={method}"))) == [message], method
    assert list(problems_of(compose(*settings, "loss.smoothing=0.1"))) == []  # smoothed labels: fine
    for method in ("kd", "nd", "dml", "bdkd", "dhkd"):  # (kd, nd and dhkd still ask for their teacher)
        assert not [p for p in problems_of(compose(*settings, f"distill={method}")) if "loss." in p], method
    loss = built(name, smoothing=0.0, **overrides)
    q, p, logits = dists(21)
    assert torch.isfinite(loss(logits, q)) and loss(logits, q) > 0
    # on labels (evaluation's val/loss) its true value is inf (fdiv clips the ratio at e^-80: ~80 per unit of mass)
    on_labels = loss(logits, torch.arange(N) % K)
    assert on_labels == math.inf or (name == "fdiv" and on_labels > 40)


# every conf/loss YAML at its default settings on probability targets: the textbook value, q never smoothed
def sinkhorn_reference(q, p, eps=0.1, iters=20):
    """Cuturi's Sinkhorn in probability space, 0-1 ground cost: u = q / (K v), v = p / (K^T u), cost <P, C>."""
    cost = 1 - torch.eye(q.shape[-1], dtype=q.dtype)
    kernel = torch.exp(-cost / eps)
    v = torch.ones_like(p)
    for _ in range(iters):
        u = q / (v @ kernel.T)
        v = p / (u @ kernel)
    plan = u[:, :, None] * kernel * v[:, None, :]
    return (plan * cost).sum((-2, -1))


def aldr_reference(q, p, lam0=10.0, alpha=2.0, margin=0.1):
    """ALDR-KL with soft labels: d_k = margin (1 - q_k) + s_k - <q, s>, s the normalised centred scores,
    lam from the official update iterated to convergence."""
    s = p.log() - p.log().mean(-1, keepdim=True)
    s = s / s.abs().mean(-1, keepdim=True)
    d = margin * (1 - q) + s - (q * s).sum(-1, keepdim=True)
    k = q.shape[-1]
    lam = torch.full(q.shape[:-1], lam0, dtype=q.dtype)
    for _ in range(500):
        w = torch.softmax(d / lam[:, None], -1)
        lam = lam0 - lam0 * (w * (k * w).log()).sum(-1) / (alpha * math.log(k))
    return lam * (d / lam[:, None]).exp().mean(-1).log() - alpha * math.log(k) / (2 * lam0) * (lam - lam0) ** 2


def standardised(p):
    centred = p.log() - p.log().mean(-1, keepdim=True)
    return centred / centred.square().mean(-1, keepdim=True).sqrt()


AT_DEFAULTS = {
    "ce": lambda q, p: -(q * p.log()).sum(-1),
    "kl": lambda q, p: kl_ref(q, p),
    "rkl": lambda q, p: kl_ref(p, q),
    "js": lambda q, p: 0.5 * kl_ref(q, (q + p) / 2) + 0.5 * kl_ref(p, (q + p) / 2),
    "tv": lambda q, p: 0.5 * (q - p).abs().sum(-1),
    "hellinger": lambda q, p: 0.5 * ((q.sqrt() - p.sqrt()) ** 2).sum(-1),
    "chi2": lambda q, p: ((q - p) ** 2 / q).sum(-1),  # Neyman
    "alpha": lambda q, p: (1 - (q.sqrt() * p.sqrt()).sum(-1)) / 0.25,
    "fdiv": lambda q, p: ((q - p) * (q / p).log()).sum(-1),  # Jeffreys
    "cs": lambda q, p: -((q * p).sum(-1) / (q.norm(dim=-1) * p.norm(dim=-1))).log(),
    "compsum": lambda q, p: (q * (1 - p ** 0.5) / 0.5).sum(-1),
    "gce": lambda q, p: (q * (1 - p ** 0.7) / 0.7).sum(-1),
    "mae": lambda q, p: (q * (1 - p)).sum(-1),
    "zloss": lambda q, p: (q * F.softplus(2.0 - standardised(p))).sum(-1),
    "ldr": aldr_reference,
    "sinkhorn": sinkhorn_reference,
}


def test_every_loss_has_a_default_settings_reference():
    assert sorted(AT_DEFAULTS) == LOSS_NAMES


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_on_probability_targets_is_its_textbook_value_at_default_settings(name):
    q, p, logits = dists(22)
    tolerance = {"rtol": 1e-4, "atol": 1e-6} if name == "ldr" else {}  # 10 fixed-point steps vs converged
    torch.testing.assert_close(built(name)(logits, q), AT_DEFAULTS[name](q, p).mean(), **tolerance)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_smoothing_applies_to_labels_and_label_mixes_never_to_probabilities(name):
    """loss(logits, y) = loss(logits, smoothed onehot(y)); a mix of one-hot labels with from_labels=True equals
    the mix of the smoothed labels (mixup's rule); probability vectors are used as given."""
    loss, plain = built(name, smoothing=0.3), built(name, smoothing=0.0)
    q, _, logits = dists(23)
    torch.testing.assert_close(loss(logits, q), plain(logits, q))
    labels, other = torch.arange(N) % K, (torch.arange(N) + 2) % K
    smoothed = lambda y: 0.7 * F.one_hot(y, K).double() + 0.3 / K  # noqa: E731
    torch.testing.assert_close(loss(logits, labels), plain(logits, smoothed(labels)))
    mix = 0.6 * F.one_hot(labels, K).double() + 0.4 * F.one_hot(other, K).double()
    torch.testing.assert_close(loss(logits, mix, from_labels=True),
                               plain(logits, 0.6 * smoothed(labels) + 0.4 * smoothed(other)))


def test_every_yaml_builds_a_loss_whose_divergence_takes_a_teachers_distribution():
    teacher, student = torch.randn(8, 10), torch.randn(8, 10)
    for name in LOSS_NAMES:
        loss = built(name)
        log_q = teacher.log_softmax(-1)
        per_sample = loss.divergence(log_q, student.log_softmax(-1))
        assert per_sample.shape == (8,) and torch.isfinite(per_sample).all()
        if name not in ("ce", "ldr", "zloss", "compsum", "gce", "mae", "sinkhorn"):  # true divergences vanish at q = p
            assert loss.divergence(log_q, log_q).abs().max() < 1e-5, name
    assert isinstance(instantiate(compose("loss=ce").loss), CrossEntropy)
