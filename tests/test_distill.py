"""Distillation (`distill=...`): each method's loss against its paper's equation written out here, the
teacher stays frozen, both online models train, memories hold what they should, and resumes are exact."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from hydra.utils import instantiate

from conftest import QUICK, compose, divrun, read_summary, run_folders, train
from runner.checkpoint import Checkpointer
from runner.context import Progress
from runner.distill.base import tempered_divergence
from runner.distill.bdkd import BDKD
from runner.distill.dhkd import aligned, binary_kl_to_half
from runner.distill.kd import KD
from runner.distill.nd import ND, norm_direction_loss
from runner.errors import ConfigError
from runner.job import run_job
from runner.logger import RunLogger
from runner.losses import CrossEntropy, build_loss
from runner.run_folder import load_config, resolved_config
from runner.train import Trainer
from runner.validate import validate
from test_losses import AT_DEFAULTS, LOSS_NAMES

SMALL = ("dataset.limit_train=256", "trainer.batch_size=64", "trainer.deterministic=true")


class KL(torch.nn.Module):
    """KL(q || p) with q the target distribution: the test's own divergence for the loss interface."""

    def forward(self, logits, target, reduction="mean"):
        per_sample = (target * (target.log() - F.log_softmax(logits, -1))).sum(-1)
        return per_sample.mean() if reduction == "mean" else per_sample


def make_trainer(tmp_path, *overrides, name: str = "run") -> Trainer:
    run_dir = tmp_path / name
    run_dir.mkdir(parents=True)
    cfg = compose(*QUICK, *SMALL, *overrides)
    validate(cfg)  # as run_job does: the config's problems before anything is built
    return Trainer.from_config(resolved_config(cfg), Checkpointer(run_dir))


def fit(trainer: Trainer) -> dict:
    return trainer.fit(RunLogger(trainer.cfg, Path("unused"), "test", None, enabled=False))


def softmax_by_hand(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    exp = torch.exp(logits / temperature)
    return exp / exp.sum(-1, keepdim=True)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A small CNN trained for 2 epochs on digits, as `divrun` leaves it."""
    _, run_dir = train(tmp_path_factory.mktemp("teacher"), *SMALL)
    return run_dir


class ToyTeacher:
    """A fixed linear teacher, called like FrozenTeacher: images -> logits."""

    def __init__(self):
        self.weight = torch.linspace(-1, 1, 5 * 4).reshape(5, 4)

    def __call__(self, images):
        return images @ self.weight


# ---- offline KD ------------------------------------------------------------------------------------------
def test_kd_loss_equals_the_formula_by_hand():
    torch.manual_seed(0)
    kd = KD(alpha=0.3, temperature=2.0)
    kd.criterion, kd.teacher, kd.context = KL(), ToyTeacher(), SimpleNamespace(progress=Progress(epoch=0))
    images, labels = torch.randn(3, 5), torch.tensor([0, 3, 1])
    student_logits = torch.randn(3, 4)
    loss = kd.loss(images, labels, torch.arange(3), student_logits)

    teacher_logits = images @ kd.teacher.weight
    q, p = softmax_by_hand(teacher_logits, 2.0), softmax_by_hand(student_logits, 2.0)
    kl = float(sum(q[i, k] * math.log(q[i, k] / p[i, k]) for i in range(3) for k in range(4))) / 3
    ce = -sum(math.log(softmax_by_hand(student_logits, 1.0)[i, labels[i]]) for i in range(3)) / 3
    assert loss.shape == (3,)  # per sample: the step's weighting point averages them
    assert loss.mean().item() == pytest.approx(0.7 * ce + 0.3 * 4.0 * kl, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_t_squared_scaling_keeps_the_soft_gradient_at_t_times_p_minus_q(temperature):
    """d/dz [T^2 KL(q_T || p_T)] = T (p_T - q_T) / N (Hinton et al.): the T^2 factor is applied exactly once."""
    torch.manual_seed(1)
    student = torch.randn(4, 6, requires_grad=True)
    teacher = torch.randn(4, 6)
    tempered_divergence(KL(), student, teacher, temperature).backward()
    p, q = softmax_by_hand(student.detach(), temperature), softmax_by_hand(teacher, temperature)
    expected = temperature * (p - q) / 4
    torch.testing.assert_close(student.grad, expected)


def test_ce_as_divergence_gives_kl_gradients():
    """CE(q, p) = KL(q || p) + H(q): with the teacher fixed, loss=ce distils exactly like KL."""
    torch.manual_seed(2)
    teacher = torch.randn(5, 7)
    grads = []
    for divergence in (KL(), CrossEntropy()):
        student = torch.randn(5, 7, generator=torch.Generator().manual_seed(3), requires_grad=True)
        tempered_divergence(divergence, student, teacher, 3.0).backward()
        grads.append(student.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_kd_teacher_is_frozen_and_its_accuracy_is_logged(tmp_path, teacher_run):
    trainer = make_trainer(tmp_path, "distill=kd", f"distill.teacher={teacher_run}", "model.width=8")
    teacher = trainer.run.method.teacher.model
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    summary = fit(trainer)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BatchNorm statistics too
    saved = read_summary_of(teacher_run)["final_val_acc1"]
    assert summary["teacher_val_acc1"] == pytest.approx(saved)


def read_summary_of(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_loss_temperature_and_missing_teacher_are_one_line_errors(tmp_path, teacher_run):
    with pytest.raises(ConfigError, match="distill.teacher: set it"):
        make_trainer(tmp_path, "distill=kd", name="a")
    with pytest.raises(ConfigError, match="set loss.temperature=1"):
        make_trainer(tmp_path, "distill=kd", f"distill.teacher={teacher_run}", "loss.temperature=2", name="b")
    with pytest.raises(ConfigError, match="distill.teacher_model"):
        make_trainer(tmp_path, "distill=kd", f"distill.teacher={teacher_run / 'checkpoints' / 'last.pt'}", name="c")


# ---- online: DML and BD-KD -------------------------------------------------------------------------------
def test_bdkd_student_loss_weighs_forward_and_reverse_kl_by_entropy():
    torch.manual_seed(4)
    bdkd = BDKD(weight=1.0, temperature=2.0)
    student, teacher, labels = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([1, 0, 2])
    student_loss, teacher_loss = bdkd.pair_losses(student, teacher, labels)

    p_s, p_t = softmax_by_hand(student, 2.0), softmax_by_hand(teacher, 2.0)
    kl = lambda a, b, i: float(sum(a[i, k] * math.log(a[i, k] / b[i, k]) for k in range(4)))
    h = lambda a, i: -float(sum(a[i, k] * math.log(a[i, k]) for k in range(4)))
    balanced = sum((h(p_t, i) * kl(p_t, p_s, i) + h(p_s, i) * kl(p_s, p_t, i)) / (h(p_s, i) + h(p_t, i))
                   for i in range(3)) / 3
    ce = lambda z: F.cross_entropy(z, labels).item()
    assert student_loss.item() == pytest.approx(ce(student) + 4.0 * balanced, rel=1e-5)
    teacher_kl = sum(kl(p_s, p_t, i) for i in range(3)) / 3
    assert teacher_loss.item() == pytest.approx(ce(teacher) + 4.0 * teacher_kl, rel=1e-5)


@pytest.mark.parametrize("method", ["dml", "bdkd"])
def test_online_methods_update_both_models(tmp_path, method):
    trainer = make_trainer(tmp_path, f"distill={method}", "distill.teacher_model=mlp", "trainer.epochs=1")
    models = {"student": trainer.model, "teacher": trainer.run.method.teacher}
    assert type(models["teacher"]).__name__ == "MLP"
    before = {name: [p.detach().clone() for p in m.parameters()] for name, m in models.items()}
    fit(trainer)
    for name, model in models.items():
        changed = [not torch.equal(old, new) for old, new in zip(before[name], model.parameters())]
        assert all(changed), f"{name}: {changed}"


def test_online_teacher_has_its_own_optimizer_and_schedule(tmp_path):
    trainer = make_trainer(tmp_path, "distill=dml", "distill.teacher_lr=0.05", "trainer.epochs=1")
    peer = trainer.run.method.peer
    assert peer.optimizer is not trainer.run.optimizer
    assert [g["lr"] for g in peer.optimizer.param_groups] == [0.05, 0.05]
    assert peer.lr_factors == trainer.run.lr_factors


# ---- self-distillation ----------------------------------------------------------------------------------
def test_pskd_targets_mix_labels_with_last_epochs_predictions(tmp_path):
    trainer = make_trainer(tmp_path, "distill=pskd", "trainer.epochs=4")
    pskd = trainer.run.method
    torch.manual_seed(5)
    indices, labels = torch.tensor([3, 7, 11]), torch.tensor([1, 4, 9])
    first = torch.randn(3, 10)
    pskd.loss(None, labels, indices, first)  # epoch 0: samples not seen yet -> one-hot targets
    pskd.after_step(0, None)

    trainer.progress.epoch = 2
    logits = torch.randn(5, 10)
    batch_indices, batch_labels = torch.tensor([3, 7, 11, 20, 21]), torch.tensor([1, 4, 9, 0, 2])
    loss = pskd.loss(None, batch_labels, batch_indices, logits)
    alpha = 0.8 * (2 + 1) / 4
    onehot = F.one_hot(batch_labels, 10).float()
    previous = torch.cat([softmax_by_hand(first, 1.0), onehot[3:]])  # samples 20, 21 were never seen
    target = (1 - alpha) * onehot + alpha * previous
    expected = -(target * F.log_softmax(logits, -1)).sum(-1).mean()
    assert loss.mean().item() == pytest.approx(expected.item(), rel=1e-5)


def test_saf_memory_returns_the_outputs_from_e_epochs_earlier(tmp_path):
    trainer = make_trainer(tmp_path, "distill=saf", "distill.epochs_back=2", "distill.start_epoch=2",
                           "trainer.epochs=6")
    saf = trainer.run.method
    indices, labels = torch.tensor([0, 5, 9]), torch.tensor([2, 2, 7])
    recorded = {}
    for epoch in range(6):
        trainer.progress.epoch = epoch
        recorded[epoch] = torch.randn(3, 10)
        loss = saf.loss(None, labels, indices, recorded[epoch])
        saf.after_step(epoch, None)
        ce = F.cross_entropy(recorded[epoch], labels)
        if epoch <= 2:
            assert loss.mean().item() == pytest.approx(ce.item(), rel=1e-6)
        else:  # active after start_epoch, against the logits of epoch - 2
            torch.testing.assert_close(saf.past_outputs(indices, epoch), recorded[epoch - 2])
            q, p = softmax_by_hand(recorded[epoch - 2], 5.0), softmax_by_hand(recorded[epoch], 5.0)
            kl = (q * (q / p).log()).sum(-1).mean()
            assert loss.mean().item() == pytest.approx((ce + 0.3 * 25.0 * kl).item(), rel=1e-5)


def test_mesa_teacher_is_the_ema_of_the_weights(tmp_path):
    trainer = make_trainer(tmp_path, "distill=mesa", "distill.decay=0.9")
    mesa, model = trainer.run.method, trainer.model
    before = [p.detach().clone() for p in mesa.ema.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    mesa.after_step(0, None)
    for old, ema, new in zip(before, mesa.ema.module.parameters(), model.parameters()):
        torch.testing.assert_close(ema, 0.9 * old + 0.1 * new)


# ---- feature losses -------------------------------------------------------------------------------------
def test_nd_loss_matches_the_papers_per_sample_formula():
    torch.manual_seed(6)
    student, teacher, centers = torch.randn(4, 8), torch.randn(4, 8), torch.randn(3, 8)
    labels = torch.tensor([0, 2, 2, 1])
    by_hand = 0.0
    for s, t, y in zip(student, teacher, labels):
        direction = centers[y] / centers[y].norm()
        by_hand += 1 - torch.dot(s, direction) / max(s.norm(), t.norm())
    assert norm_direction_loss(student, teacher, centers, labels).mean().item() == pytest.approx(float(by_hand) / 4, rel=1e-5)


def test_kdpp_objective_weighs_ce_kd_and_nd_independently():
    """Wang et al.'s train_cifar_kd.py: cls * CE + kd * min(1, epoch / warm_up) * T^2 KL + nd * ND, here with
    the resnet32x4 -> resnet8x4 factors 1 : 3.5 : 2 at epoch 5 of a 20-epoch warm-up."""
    torch.manual_seed(8)
    nd = ND(ce_weight=1.0, kd_weight=3.5, nd_weight=2.0, temperature=4.0, warmup_epochs=20)
    to_features, to_logits = torch.randn(5, 6), torch.randn(6, 4)
    nd.teacher = type("Teacher", (), {"features_and_logits": lambda self, x: (x @ to_features, x @ to_features @ to_logits)})()
    nd.criterion, nd.context, nd.projector = KL(), SimpleNamespace(progress=Progress(epoch=5)), None
    nd.centers, nd.tap = torch.randn(4, 6), type("Tap", (), {"features": torch.randn(3, 6)})()
    images, labels, student_logits = torch.randn(3, 5), torch.tensor([0, 3, 1]), torch.randn(3, 4)
    loss = nd.loss(images, labels, torch.arange(3), student_logits)

    teacher_features = images @ to_features
    q, p = softmax_by_hand(teacher_features @ to_logits, 4.0), softmax_by_hand(student_logits, 4.0)
    kl = float(sum(q[i, k] * math.log(q[i, k] / p[i, k]) for i in range(3) for k in range(4))) / 3
    ce = -sum(math.log(softmax_by_hand(student_logits, 1.0)[i, labels[i]]) for i in range(3)) / 3
    norm_direction = 0.0
    for s, t, y in zip(nd.tap.features, teacher_features, labels):
        norm_direction += 1 - torch.dot(s, nd.centers[y] / nd.centers[y].norm()) / max(s.norm(), t.norm())
    expected = 1.0 * ce + 3.5 * (5 / 20) * 16.0 * kl + 2.0 * float(norm_direction) / 3
    assert loss.mean().item() == pytest.approx(expected, rel=1e-5)


def test_dhkd_binary_kl_is_the_bernoulli_kl_to_one_half():
    assert compose("distill=dhkd").distill.temperature == 2.0  # checked at its default T
    torch.manual_seed(7)
    student, teacher = torch.randn(3, 5), torch.randn(3, 5)
    d = torch.sigmoid((student - teacher) / 2.0)
    bernoulli_kl = 0.5 * torch.log(0.5 / d) + 0.5 * torch.log(0.5 / (1 - d))
    expected = 4.0 * bernoulli_kl.sum().item() / 3  # T^2 / N * sum over samples and classes
    assert binary_kl_to_half(student, teacher, 2.0).item() == pytest.approx(expected, rel=1e-5)
    assert binary_kl_to_half(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("conflict", [True, False])
def test_dhkd_gradient_alignment_projects_a_conflicting_kd_gradient(conflict):
    """penghui-yang/DHKD's OptimGradAlign over the flattened student: g = g_ce + g_kd, where g_kd first loses
    its component along g_ce if <g_kd, g_ce> < 0. Linear losses make the gradients their coefficients."""
    torch.manual_seed(9)
    backbone, aux_head = torch.randn(6, requires_grad=True), torch.randn(3, requires_grad=True)
    a, b, c = torch.randn(6), torch.randn(6), torch.randn(3)
    if (torch.dot(a, b) < 0) != conflict:
        b = -b
    ce, kd = (backbone * a).sum(), (backbone * b).sum() + (aux_head * c).sum()
    loss = aligned(ce, kd, [backbone, aux_head])
    loss.backward()

    assert loss.item() == pytest.approx((ce + kd).item())
    projected_b = b - torch.dot(a, b) / torch.dot(a, a) * a if conflict else b
    torch.testing.assert_close(backbone.grad, a + projected_b)
    torch.testing.assert_close(aux_head.grad, c)  # the CE gradient is zero there: nothing to project


@pytest.mark.parametrize("method,extra", [("nd", "projector"), ("dhkd", "aux_head")])
def test_feature_methods_train_their_extra_module(tmp_path, teacher_run, method, extra):
    trainer = make_trainer(tmp_path, f"distill={method}", f"distill.teacher={teacher_run}", "model=mlp",
                           "trainer.epochs=1")
    module = getattr(trainer.run.method, extra).module
    before = [p.detach().clone() for p in module.parameters()]
    fit(trainer)
    assert all(not torch.equal(old, new) for old, new in zip(before, module.parameters()))


# ---- every method's divergence term at its default settings: the textbook value, the teacher unsmoothed ---
def from_defaults(*overrides: str, epoch: int = 0, epochs: int = 10):
    """A distiller and the run's loss as conf/ builds them (the YAML defaults), in a stub method context."""
    cfg = compose(*overrides)
    distiller = instantiate(cfg.distill)
    distiller.criterion = build_loss(cfg.loss)
    distiller.context = SimpleNamespace(progress=Progress(epoch=epoch), epochs=epochs)
    return distiller


def ce_by_hand(logits, labels, smoothing=0.0):
    k = logits.shape[-1]
    q = (1 - smoothing) * F.one_hot(labels, k).double() + smoothing / k
    return float(-(q * softmax_by_hand(logits.double(), 1.0).log()).sum(-1).mean())


def kl_by_hand(q, p):
    return float((q * (q / p).log()).sum(-1).mean())


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_kd_divergence_term_is_the_textbook_value_for_every_loss(loss):
    """distill=kd loss=<any>: 0.1 CE + 0.9 T^2 D(p_t, p_s) at T = 4, D at the loss's defaults with the
    teacher's probabilities as given (rkl's smoothing 0.1 is for labels: T^2 KL(p_s || p_t) exactly)."""
    torch.manual_seed(10)
    kd = from_defaults("distill=kd", f"loss={loss}")
    kd.teacher = ToyTeacher()
    images, labels, student = torch.randn(6, 5) * 2, torch.tensor([0, 3, 1, 2, 2, 0]), torch.randn(6, 4) * 3
    p_t = softmax_by_hand((images @ kd.teacher.weight).double(), 4.0)
    p_s = softmax_by_hand(student.double(), 4.0)
    expected = 0.1 * ce_by_hand(student, labels) + 0.9 * 16.0 * float(AT_DEFAULTS[loss](p_t, p_s).mean())
    assert kd.loss(images, labels, torch.arange(6), student).mean().item() == pytest.approx(expected, rel=1e-4)
    if loss == "rkl":
        assert kd.criterion.smoothing == 0.1 and kd.temperature ** 2 * kl_by_hand(p_s, p_t) == pytest.approx(
            (kd.loss(images, labels, torch.arange(6), student).mean().item() - 0.1 * ce_by_hand(student, labels)) / 0.9, rel=1e-4)


@pytest.mark.parametrize("loss", ["kl", "rkl"])
def test_dml_terms_are_the_textbook_divergences_both_ways(loss):
    """Each network: CE + 1 * T^2 D(other, own) at T = 1 (the paper's KL, or reverse KL unsmoothed)."""
    torch.manual_seed(11)
    dml = from_defaults("distill=dml", f"loss={loss}")
    student, teacher, labels = torch.randn(5, 4) * 2, torch.randn(5, 4) * 2, torch.tensor([1, 0, 3, 2, 1])
    student_loss, teacher_loss = dml.pair_losses(student, teacher, labels)
    p_s, p_t = softmax_by_hand(student.double(), 1.0), softmax_by_hand(teacher.double(), 1.0)
    d = AT_DEFAULTS[loss]
    assert student_loss.item() == pytest.approx(ce_by_hand(student, labels) + float(d(p_t, p_s).mean()), rel=1e-5)
    assert teacher_loss.item() == pytest.approx(ce_by_hand(teacher, labels) + float(d(p_s, p_t).mean()), rel=1e-5)


def test_bdkd_term_at_its_defaults_ignores_the_loss_groups_smoothing():
    torch.manual_seed(12)
    bdkd = from_defaults("distill=bdkd", "loss=rkl")  # T 1, weight 1; its own KLs, never the loss group's
    student, teacher, labels = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([1, 0, 2])
    student_loss, _ = bdkd.pair_losses(student, teacher, labels)
    p_s, p_t = softmax_by_hand(student.double(), 1.0), softmax_by_hand(teacher.double(), 1.0)
    h_s, h_t = -(p_s * p_s.log()).sum(-1), -(p_t * p_t.log()).sum(-1)
    forward, reverse = (p_t * (p_t / p_s).log()).sum(-1), (p_s * (p_s / p_t).log()).sum(-1)
    balanced = float(((h_t * forward + h_s * reverse) / (h_s + h_t)).mean())
    assert student_loss.item() == pytest.approx(ce_by_hand(student, labels) + balanced, rel=1e-5)


def test_nd_kd_term_is_the_textbook_divergence_at_its_defaults():
    """KD++ defaults (1 : 1 : 2, T 4, warm-up 20) at epoch 10 with loss=rkl: the KD term is
    0.5 * 16 * KL(p_s || p_t), the teacher unsmoothed."""
    torch.manual_seed(13)
    nd = from_defaults("distill=nd", "loss=rkl", epoch=10)
    to_features, to_logits = torch.randn(5, 6), torch.randn(6, 4)
    features_and_logits = lambda self, x: (x @ to_features, x @ to_features @ to_logits)  # noqa: E731
    nd.teacher = type("Teacher", (), {"features_and_logits": features_and_logits})()
    nd.centers, nd.projector = torch.randn(4, 6), None
    nd.tap = type("Tap", (), {"features": torch.randn(3, 6)})()
    images, labels, student = torch.randn(3, 5), torch.tensor([0, 3, 1]), torch.randn(3, 4)
    teacher_features = images @ to_features
    p_t = softmax_by_hand((teacher_features @ to_logits).double(), 4.0)
    p_s = softmax_by_hand(student.double(), 4.0)
    norm_direction = norm_direction_loss(nd.tap.features, teacher_features, nd.centers, labels).mean().item()
    expected = ce_by_hand(student, labels) + 0.5 * 16.0 * kl_by_hand(p_s, p_t) + 2.0 * norm_direction
    assert nd.loss(images, labels, torch.arange(3), student).mean().item() == pytest.approx(expected, rel=1e-5)


def test_pskd_smooths_the_label_part_only():
    """loss=rkl (smoothing 0.1) with PS-KD's alpha_T 0.8, epoch 2 of 4: q = (1 - a) LS(y) + a p_prev with
    p_prev as recorded (unseen samples fall back to LS(y)); the loss is KL(p || q)."""
    torch.manual_seed(14)
    pskd = from_defaults("distill=pskd", "loss=rkl", epoch=0, epochs=4)
    pskd.predictions, pskd.seen, pskd.pending = torch.zeros(30, 4), torch.zeros(30, dtype=torch.bool), None
    first = torch.randn(2, 4)
    pskd.loss(None, torch.tensor([1, 3]), torch.tensor([4, 9]), first)
    pskd.after_step(0, None)
    pskd.context.progress.epoch = 2
    labels, logits = torch.tensor([1, 3, 0]), torch.randn(3, 4)
    loss = pskd.loss(None, labels, torch.tensor([4, 9, 20]), logits)
    alpha = 0.8 * 3 / 4
    smoothed = 0.9 * F.one_hot(labels, 4).double() + 0.1 / 4
    previous = torch.cat([softmax_by_hand(first.double(), 1.0), smoothed[2:]])
    q = (1 - alpha) * smoothed + alpha * previous
    assert loss.mean().item() == pytest.approx(kl_by_hand(softmax_by_hand(logits.double(), 1.0), q), rel=1e-5)


@pytest.mark.parametrize("method", ["saf", "mesa"])
def test_trajectory_term_at_defaults_is_the_unsmoothed_kl(method):
    """SAF (0.3, tau 5, E 3, start 5) and MESA (0.8, tau 5, start 5) at epoch 6: the label loss smooths the
    labels (loss.smoothing=0.2), the trajectory term lambda tau^2 KL(past || now) uses the past outputs as given."""
    torch.manual_seed(15)
    distiller = from_defaults(f"distill={method}", "loss.smoothing=0.2", epoch=6)
    images, labels, logits, past = torch.randn(3, 5), torch.tensor([2, 0, 1]), torch.randn(3, 4), torch.randn(3, 4) * 4
    if method == "saf":
        distiller.outputs, distiller.pending = torch.zeros(4, 10, 4), None
        distiller.outputs[(6 - 3) % 4, :3] = past  # the logits recorded E = 3 epochs earlier
        weight = 0.3
    else:
        distiller.ema = lambda x: past
        weight = 0.8
    loss = distiller.loss(images, labels, torch.arange(3), logits)
    trajectory = 25.0 * kl_by_hand(softmax_by_hand(past.double(), 5.0), softmax_by_hand(logits.double(), 5.0))
    assert loss.mean().item() == pytest.approx(ce_by_hand(logits, labels, smoothing=0.2) + weight * trajectory, rel=1e-5)


# ---- checkpoints and the workflow -------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dml", "pskd"])
def test_resume_of_a_distilled_run_matches_the_uninterrupted_run(tmp_path, monkeypatch, method):
    overrides = (f"distill={method}", "trainer.epochs=3")
    _, straight = train(tmp_path / "straight", *SMALL, *overrides)

    save_checkpoint = Trainer.checkpoint

    def stop_after_first_epoch(self, *args):
        save_checkpoint(self, *args)
        if self.progress.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "checkpoint", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "stopped", *SMALL, *overrides)
    monkeypatch.undo()
    stopped = tmp_path / "stopped" / "run"
    run_job(load_config(stopped), stopped, resolved=True, resume=True)

    records = [[{k: v for k, v in json.loads(line).items() if k != "train/img_per_s"}
                for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (straight, stopped)]
    assert records[0] == records[1]
    payloads = [torch.load(run / "checkpoints" / "last.pt", weights_only=True) for run in (straight, stopped)]
    assert_same_tensors(payloads[0]["model"], payloads[1]["model"])
    assert_same_tensors(payloads[0]["distill"], payloads[1]["distill"])


def assert_same_tensors(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_tensors(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tensors(x, y)
    else:
        assert a == b


def test_teacher_then_student_workflow_with_divrun(tmp_path):
    (tmp_path / "teacher").mkdir()
    divrun("trainer.epochs=3", "logger.progress=false", "trainer.device=cpu", cwd=tmp_path / "teacher")
    [teacher] = run_folders(tmp_path / "teacher")
    # the student: an MLP with 26k parameters (the teacher CNN has 29k)
    divrun("distill=kd", f"distill.teacher={teacher}", "distill.temperature=2", "distill.alpha=0.5",
           "model=mlp", "model.hidden=128", "trainer.epochs=3", "logger.progress=false", "trainer.device=cpu",
           cwd=tmp_path)
    [student] = [run for run in run_folders(tmp_path) if run != teacher]
    summary = read_summary(student)
    assert summary["status"] == "finished"
    assert summary["teacher_val_acc1"] == pytest.approx(read_summary(teacher)["final_val_acc1"])
    assert summary["final_val_acc1"] > 0.5  # ten classes: chance is 0.1
    evals = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines() if "val/acc1" in line]
    assert "teacher/val/acc1" in evals[0] and all("teacher/val/acc1" not in r for r in evals[1:])
    assert load_config(student).distill.teacher == str(teacher)
