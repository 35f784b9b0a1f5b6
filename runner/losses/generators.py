"""Generators f(t) of f-divergences D_f(q || p) = sum_k p_k f(q_k / p_k), t = q / p; `loss=fdiv
loss.generator=<name>` picks one. Each is convex with f(1) = 0. Add a function here for a new divergence."""
import torch


def kl(t):
    """KL(q || p)"""
    return torch.special.xlogy(t, t)


def reverse_kl(t):
    """KL(p || q)"""
    return -torch.log(t)


def jeffreys(t):
    """KL(q || p) + KL(p || q)"""
    return (t - 1) * torch.log(t)


def jensen_shannon(t):
    """JS with pi = 1/2"""
    return 0.5 * (torch.special.xlogy(t, t) - torch.special.xlogy(t + 1, (t + 1) / 2))


def total_variation(t):
    return 0.5 * (t - 1).abs()


def hellinger(t):
    """squared Hellinger, 1 - sum sqrt(q p)"""
    return 0.5 * (t.sqrt() - 1) ** 2


def pearson(t):
    """Pearson chi^2, sum (q - p)^2 / p"""
    return (t - 1) ** 2


def neyman(t):
    """Neyman chi^2, sum (q - p)^2 / q"""
    return (t - 1) ** 2 / t


def triangular(t):
    """triangular discrimination (Le Cam), sum (q - p)^2 / (q + p), in [0, 2]"""
    return (t - 1) ** 2 / (t + 1)
