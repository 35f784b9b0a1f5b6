"""BD-KD, Balancing the Divergences for online KD (Amara et al., arXiv 2212.12965): mutual learning whose
student loss weighs forward and reverse KL per sample to balance the student's confidence against the
teacher's. With p_s = softmax(z_s / T), p_t = softmax(z_t / T) and the entropies H_s, H_t of sample i:

    w_f,i = H_t,i / (H_s,i + H_t,i)          w_r,i = H_s,i / (H_s,i + H_t,i)        (no gradient)
    L_s = CE(y, z_s) + T^2 * mean_i [ w_f,i KL(p_t || p_s) + w_r,i KL(p_s || p_t) ]
    L_t = CE(y, z_t) + T^2 * mean_i KL(p_s || p_t)                     (the teacher's usual online-KD loss)

A student less confident than the teacher (H_s > H_t) leans on the mode-seeking reverse KL, which sharpens
it; an over-confident one on the mass-covering forward KL, which softens it. In each KL the other model's
distribution is a fixed target. Everything else (second model, optimizer, schedule, evaluation,
checkpoints) is `dml`'s. Source note: no official or author implementation was found (GitHub searched by
title, arXiv id 2212.12965, "bdkd"/"BD-KD" and the authors' names, in code and in issues); the abstract says
only: sample-wise weighting of forward and reverse KL, on both the student's and the teacher's losses,
balancing the student's confidence. The entropy-ratio weights and the teacher's plain KL(p_s || p_t) are this
reading of it, not the paper's method section: check them against it before quoting BD-KD numbers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from runner.distill.base import entropy, kl_per_sample
from runner.distill.dml import DML


def balance_weights(student_log_probs: torch.Tensor,
                    teacher_log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_forward, w_reverse) per sample from the two entropies; they sum to 1."""
    h_s, h_t = entropy(student_log_probs.detach()), entropy(teacher_log_probs.detach())
    total = (h_s + h_t).clamp_min(torch.finfo(h_s.dtype).tiny)
    return h_t / total, h_s / total


class BDKD(DML):
    def student_distillation(self, logits, teacher_logits):
        log_p_s = F.log_softmax(logits.float() / self.temperature, dim=-1)
        log_p_t = F.log_softmax(teacher_logits.detach().float() / self.temperature, dim=-1)
        w_forward, w_reverse = balance_weights(log_p_s, log_p_t)
        balanced = w_forward * kl_per_sample(log_p_t, log_p_s) + w_reverse * kl_per_sample(log_p_s, log_p_t)
        return self.weight * self.temperature ** 2 * balanced.mean()

    def teacher_distillation(self, teacher_logits, logits):
        log_p_t = F.log_softmax(teacher_logits.float() / self.temperature, dim=-1)
        log_p_s = F.log_softmax(logits.detach().float() / self.temperature, dim=-1)
        return self.weight * self.temperature ** 2 * kl_per_sample(log_p_s, log_p_t).mean()
