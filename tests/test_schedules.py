"""Schedules against their closed forms (hand-computed vectors, torch's schedulers), the refined schedule from
recorded gradient norms, the per-run schedule files, and exact resumption through a checkpoint."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import QUICK, compose, divrun, read_summary, run_folders, train
from runner.checkpoint import load, save_atomic
from runner.errors import ConfigError
from runner.config import update_rule
from runner.optim import capabilities
from runner.schedules import (UBA, WSD, Constant, Cosine, Linear, MultiStep, Poly, Refined, Step, refined_curve,
                              smoothed_norms)

FAST = ["dataset.limit_train=512", "trainer.epochs=1"]  # 4 steps of 128 digits


# ---- closed forms --------------------------------------------------------------------------------------
def test_linear_decay_hand_vector():
    assert Linear(5).factors() == pytest.approx([1, .8, .6, .4, .2])


def test_cosine_closed_form_at_chosen_steps():
    schedule = Cosine(10, floor=0.1)
    for t in (0, 3, 5, 9):
        assert schedule(t) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / 10)), abs=1e-15)
    assert schedule(5) == pytest.approx(0.55)


def test_warmup_steps_and_fraction():
    # W = 2: (t + 1) / W, then linear over the T - W = 8 remaining steps
    expected = [0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]
    assert Linear(10, warmup=2).factors() == pytest.approx(expected)
    assert Linear(10, warmup=0.2).factors() == pytest.approx(expected)
    assert Constant(4, warmup=2).factors() == pytest.approx([0.5, 1, 1, 1])


def test_floor_is_the_final_fraction():
    assert Linear(5, floor=0.5).factors() == pytest.approx([1, .9, .8, .7, .6])
    assert Cosine(1000, floor=0.2)(999) == pytest.approx(0.2, abs=1e-5)


@pytest.mark.parametrize("bad", [{"warmup": 10}, {"warmup": -1}, {"warmup": 1.5}, {"floor": 1.5}])
def test_bad_warmup_or_floor_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="schedule"):
        Cosine(10, **bad)


def test_poly_matches_torch_polynomial_lr():
    T, power = 12, 0.9
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    reference = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=T, power=power)
    expected = []
    for _ in range(T):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    assert Poly(T, power=power).factors() == pytest.approx(expected, rel=1e-12)
    assert Poly(5, power=1.0).factors() == pytest.approx(Linear(5).factors())


def epoch_scheduler_lrs(make, epochs: int, steps_per_epoch: int) -> list[float]:
    """torch's per-epoch scheduler, repeated for every step of the epoch."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = make(optimizer)
    lrs = []
    for _ in range(epochs):
        lrs += [optimizer.param_groups[0]["lr"]] * steps_per_epoch
        optimizer.step()
        scheduler.step()
    return lrs


def test_multistep_and_step_match_torch_per_epoch():
    S, epochs = 3, 10
    expected = epoch_scheduler_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [3, 7], gamma=0.2), epochs, S)
    assert MultiStep(S * epochs, S, milestones=[3, 7], gamma=0.2).factors() == pytest.approx(expected)
    # fractions of the run: 0.3 and 0.7 of 30 steps are the same milestones
    assert MultiStep(S * epochs, S, milestones=[0.3, 0.7], gamma=0.2).factors() == pytest.approx(expected)
    expected = epoch_scheduler_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.1), epochs, S)
    assert Step(S * epochs, S, step_size=4).factors() == pytest.approx(expected)
    # hand vector: x0.1 at epochs 2 and 4 with 2 steps per epoch
    assert MultiStep(10, 2, milestones=[2, 4]).factors() == pytest.approx([1] * 4 + [.1] * 4 + [.01] * 2)
    assert Step(10, 2, step_size=0.4).factors() == pytest.approx([1] * 4 + [.1] * 4 + [.01] * 2)
    for bad in ({"milestones": [2.5]}, {"milestones": [0]}):
        with pytest.raises(ConfigError, match="schedule.milestones"):
            MultiStep(10, 2, **bad)
    with pytest.raises(ConfigError, match="schedule.step_size"):
        Step(10, 2, step_size=30.0)


def test_multistep_floor_and_warmup():
    assert MultiStep(6, 1, warmup=2, floor=0.5, milestones=[4]).factors() == pytest.approx([.5, 1, 1, 1, .55, .55])


def test_wsd_cooldowns_hand_vectors():
    stable = [1.0] * 6
    assert WSD(10, decay=0.4, cooldown="linear").factors() == pytest.approx(stable + [1, .75, .5, .25])
    assert WSD(10, decay=4, cooldown="cosine").factors() == pytest.approx(
        stable + [1, (1 + math.cos(math.pi / 4)) / 2, .5, (1 + math.cos(3 * math.pi / 4)) / 2])
    assert WSD(10, decay=0.4).factors() == pytest.approx(stable + [1, 1 - .5, 1 - math.sqrt(.5), 1 - math.sqrt(.75)])
    assert WSD(10, warmup=2, decay=0.2, floor=0.1, cooldown="linear").factors() == pytest.approx(
        [.5, 1, 1, 1, 1, 1, 1, 1, 1, .55])
    with pytest.raises(ConfigError, match="overlaps the warmup"):
        WSD(10, warmup=0.5, decay=0.6)
    with pytest.raises(ConfigError, match="cooldown"):
        WSD(10, cooldown="exp")


def test_uba_closed_form():
    def uba(t, T, phi):  # Tang et al.: eta_min + (eta_max - eta_min) 2v / (2 phi + (2 - phi) v), v = 1 + cos(pi t / T)
        v = 1 + math.cos(math.pi * t / T)
        return 2 * v / (2 * phi + (2 - phi) * v)

    T = 1000
    assert np.abs(np.array(UBA(T, phi=2.0).factors()) - np.array(Cosine(T).factors())).max() < 1e-12
    for phi in (0.5, 1.0, 4.0):
        schedule = UBA(T, phi=phi)
        for t in (0, 250, 500, 999):
            assert schedule(t) == pytest.approx(uba(t, T, phi), abs=1e-15)
    assert UBA(4, phi=1.0)(1) == pytest.approx(0.920991, abs=1e-6)  # 3.414214 / 3.707107
    cosine, low, high = np.array(Cosine(T).factors()), np.array(UBA(T, phi=0.5).factors()), np.array(UBA(T, phi=4).factors())
    assert (low[1:] > cosine[1:]).all() and (high[1:] < cosine[1:]).all()  # phi < 2 holds the lr higher
    assert (np.diff(low) < 0).all() and low[0] == 1.0
    assert UBA(5, floor=0.5, phi=2.0).factors() == pytest.approx(Cosine(5, floor=0.5).factors())
    with pytest.raises(ConfigError, match="phi"):
        UBA(10, phi=0.0)


# ---- refined ------------------------------------------------------------------------------------------
def test_refined_closed_form_hand_vectors():
    norms = np.array([4.0, 2, 1, 1, 1])
    # SGD: w = G^-2 = [1/16, 1/4, 1, 1, 1]; w_t * sum_{s>t} w_s = [3.25/16, .75, 2, 1, 0], peak 2
    assert refined_curve(norms, power=2) == pytest.approx([.1015625, .375, 1, .5, 0])
    # Adam: w = G^-1 = [1/4, 1/2, 1, 1, 1]; products [.875, 1.5, 2, 1, 0]
    assert refined_curve(norms, power=1) == pytest.approx([.4375, .75, 1, .5, 0])
    assert refined_curve(np.full(5, 3.0), power=2) == pytest.approx([1, .75, .5, .25, 0])


def reference_pipeline(norms: np.ndarray, power: int, sigma2: float = 0.1) -> np.ndarray:
    """The refinement authors' pipeline (adaptive_scheduling's README and visual.py, nvals = 10,000), written
    from its description: up-sample short runs to 10k points, scipy's median filter with the README's padding,
    down to 10k points, weights G^-power, eta_t = w_t * sum_{s>t} w_s, peak 1."""
    from scipy.ndimage import median_filter

    nvals = 10_000
    if len(norms) < nvals:
        norms = np.interp(np.linspace(0, 1, nvals), np.linspace(0, 1, len(norms)), norms)
    width = 2 * (int(sigma2 * nvals) // 2) + 1
    pad = 2 * width
    filtered = median_filter(np.pad(norms, (0, pad), mode="reflect"), size=width, mode="nearest")[:-pad]
    smooth = np.interp(np.linspace(0, 1, nvals), np.linspace(0, 1, len(filtered)), filtered)
    w = smooth ** -float(power)
    schedule = w * (w.sum() - np.cumsum(w))  # sum over s > t
    return schedule / schedule.max()


def noisy_norms(steps: int, seed: int) -> np.ndarray:
    """A gradient-norm trace like the published ones: a fast early fall, a slow late rise, log-normal noise,
    rare 10x spikes, and inf where an fp16 step overflowed."""
    rng = np.random.default_rng(seed)
    u = np.linspace(0, 1, steps)
    norms = (1 + 4 * np.exp(-12 * u) + 0.8 * u ** 2) * rng.lognormal(0, 0.35, steps)
    norms[rng.random(steps) < 0.005] *= 10
    norms[rng.choice(steps, 3, replace=False)] = np.inf
    return norms


@pytest.mark.parametrize("steps,optimizer,seed", [(2_700, "torch.optim.SGD", 0), (35_000, "torch.optim.AdamW", 1)])
def test_refined_matches_the_reference_pipeline_on_short_and_long_runs(tmp_path, steps, optimizer, seed):
    """RCNN-like (2.7k SGD steps, L2 norms, G^-2) and ViT-like (35k AdamW steps, L1 norms, G^-1) sources."""
    norms = noisy_norms(steps, seed)
    adam = optimizer.endswith("AdamW")
    source = make_source(tmp_path, norms if not adam else np.ones(steps), norms if adam else None, optimizer)
    expected = reference_pipeline(norms[np.isfinite(norms)], power=1 if adam else 2)
    at_10k = np.array(Refined(10_000, source=source, run_optimizer=optimizer).factors())
    assert np.abs(at_10k - expected).max() < 1e-3  # the reference's own resolution: no resampling between them
    # at any other length: the reference curve resampled linearly and scaled to peak 1 (divrun's last step)
    as_long = np.array(Refined(steps, source=source, run_optimizer=optimizer).factors())
    resampled = np.interp(np.linspace(0, 1, steps), np.linspace(0, 1, 10_000), expected)
    assert np.abs(as_long - resampled / resampled.max()).max() < 1e-3
    # the old reading (window = 10% of the run, 3,501 steps at 35k) is far from it: the test can tell them apart
    if steps > 10_000:
        from scipy.ndimage import median_filter
        finite = norms[np.isfinite(norms)]
        tenth = 2 * (len(finite) // 20) + 1
        wide = median_filter(np.pad(finite, (0, 2 * tenth), mode="reflect"), size=tenth, mode="nearest")[:-2 * tenth]
        assert np.abs(refined_curve(wide, power=1)[::len(finite) // 1000][:1000]
                      - expected[::10][:1000]).max() > 0.01


def test_smoothed_norms_window_edges_and_resolution():
    from scipy.ndimage import median_filter

    # a lone spike disappears; a 50-step run is filtered on its 10k-point interpolation with a 1,001-point window
    spiky = np.ones(50)
    spiky[20] = 100.0
    assert np.array_equal(smoothed_norms(spiky, 0.1), np.ones(10_000))
    rising = np.linspace(1, 2, 50)
    dense = np.interp(np.linspace(0, 1, 10_000), np.linspace(0, 1, 50), rising)
    smoothed = smoothed_norms(rising, 0.1)
    assert smoothed[0] == dense[0]  # left ('nearest'): 500 copies of the first value hold the median there
    # right (mirrored tail): the last window holds d[-501..-2] twice and d[-1] once, so its median is d[-251]
    assert smoothed[-1] == pytest.approx(dense[-251], abs=1e-12) and smoothed[5000] == pytest.approx(dense[5000])
    # sigma2 sets the window in points of 10,000: 0.02 -> 201 points
    noisy = np.random.default_rng(2).random(10_000)
    assert np.array_equal(smoothed_norms(noisy, 0.02),
                          median_filter(np.pad(noisy, (0, 402), mode="reflect"), size=201, mode="nearest")[:-402])
    # a long run (300k steps) is filtered at full length (1,001 steps), then sampled down to 10k points
    long = np.random.default_rng(3).random(300_000)
    full = median_filter(np.pad(long, (0, 2002), mode="reflect"), size=1001, mode="nearest")[:-2002]
    sampled = np.interp(np.linspace(0, 1, 10_000), np.linspace(0, 1, 300_000), full)
    assert np.array_equal(smoothed_norms(long, 0.1), sampled)


def make_source(folder, norms_l2, norms_l1=None, optimizer="torch.optim.SGD"):
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({"optimizer": {"_target_": optimizer}}), folder / "config.yaml")
    l1 = norms_l1 if norms_l1 is not None else [0] * len(norms_l2)
    rows = "".join(f"{t},{a},{b}\n" for t, (a, b) in enumerate(zip(norms_l2, l1)))
    (folder / "grad_norms.csv").write_text("step,l2,l1\n" + rows)
    return str(folder)


def test_refined_from_a_run_folder(tmp_path):
    source = make_source(tmp_path / "sgd", [4, 2, 1, 1, 1])
    assert Refined(5, source=source, smoothing=0).factors() == pytest.approx([.1015625, .375, 1, .5, 0])
    # a constant norm sequence gives linear decay to 0, resampled to any length (with smoothing on, too)
    flat = make_source(tmp_path / "flat", [2.0] * 40)
    assert Refined(9, source=flat, smoothing=0).factors() == pytest.approx(np.linspace(1, 0, 9))
    assert Refined(9, source=flat).factors() == pytest.approx(np.linspace(1, 0, 9), abs=1e-3)
    # warmup and floor wrap the refined curve: T - W = 5 steps of it
    assert Refined(7, source=source, smoothing=0, warmup=2, floor=0.2).factors() == pytest.approx(
        [.5, 1, .2 + .8 * .1015625, .2 + .8 * .375, 1, .2 + .8 * .5, .2])
    # Adam-family sources weight by L1 norms: w = G^-1
    adam = make_source(tmp_path / "adam", [9] * 5, [4, 2, 1, 1, 1], optimizer="torch.optim.AdamW")
    assert Refined(5, source=adam, smoothing=0, run_optimizer="torch.optim.AdamW").factors() == pytest.approx(
        [.4375, .75, 1, .5, 0])
    assert Refined(5, source=adam, smoothing=0, norm="l2").factors() == pytest.approx([1, .75, .5, .25, 0])


def test_refined_rejects_missing_or_incompatible_sources(tmp_path):
    with pytest.raises(ConfigError, match="schedule.source=<run folder>"):
        Refined(5)
    with pytest.raises(ConfigError, match="no config.yaml"):
        Refined(5, source=str(tmp_path / "absent"))
    sgd = make_source(tmp_path / "sgd", [1, 2, 3])
    with pytest.raises(ConfigError, match="same optimizer family"):
        Refined(5, source=sgd, run_optimizer="torch.optim.AdamW")
    adam_without_l1 = make_source(tmp_path / "adam", [1, 2, 3], optimizer="torch.optim.Adam")
    with pytest.raises(ConfigError, match="grad_norm_l1=true"):
        Refined(5, source=adam_without_l1)
    with pytest.raises(ConfigError, match="at least 2 steps"):
        Refined(5, source=make_source(tmp_path / "one", [1.0]))


def test_adam_family():
    adaptive = lambda target: capabilities(target).adaptive  # noqa: E731
    assert all(map(adaptive, ["torch.optim.AdamW", "torch.optim.NAdam", "torch.optim.Adagrad", "torch.optim.RMSprop",
                              "runner.optim.adabelief.AdaBelief", "runner.optim.stable_spam.StableSPAM"]))
    assert not any(map(adaptive, ["torch.optim.SGD", "runner.optim.lion.Lion", "runner.optim.sgdp.SGDP"]))


@pytest.mark.parametrize("wrapper", ["sam", "lookahead"])
def test_a_wrapper_belongs_to_its_base_optimizers_family(wrapper):
    """SAM(AdamW) applies AdamW's update: it records L1 norms and refines from (and into) AdamW runs."""
    for base, family in (("adamw", True), ("sgd", False)):
        cfg = compose("schedule=refined", f"optimizer={wrapper}", f"optimizer.base={base}")
        assert update_rule(cfg.optimizer) == cfg.schedule.run_optimizer == cfg.optimizer.base_optimizer._target_
        assert capabilities(cfg.schedule.run_optimizer).adaptive is family
        assert capabilities(cfg.optimizer).adaptive is family
    assert update_rule(compose("optimizer=lion").optimizer) == "runner.optim.lion.Lion"


# ---- resume -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["constant", "step", "multistep", "cosine", "linear", "poly", "wsd", "uba"])
def test_schedule_resumes_from_a_checkpointed_step(tmp_path, name):
    cfg = compose(f"schedule={name}", "schedule.warmup=3")
    build = lambda: schedules_from(cfg)  # noqa: E731 - a fresh schedule, as a resumed process builds it
    full = build().factors()
    first = build()
    before = [first(t) for t in range(17)]
    save_atomic({"step": 17}, tmp_path / "last.pt")
    resumed = build()
    after = [resumed(t) for t in range(load(tmp_path / "last.pt")["step"], 40)]
    assert before + after == full


def schedules_from(cfg):
    from hydra.utils import instantiate
    return instantiate(cfg.schedule)(total_steps=40, steps_per_epoch=4)


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_resumed_from_a_checkpoint_applies_the_same_lrs(tmp_path, monkeypatch):
    from runner.job import run_job
    from runner.step import Step

    overrides = ["schedule=wsd", "schedule.decay=0.5", "trainer.log_every=1", "dataset.limit_train=768"]
    _, straight = train(tmp_path / "straight", *overrides)

    original_step = Step.__call__

    def crash_at_step_8(self, images, labels, indices, step):  # two updates past the epoch-1 checkpoint (step 6) are logged
        if step == 8:
            raise RuntimeError("simulated crash")
        return original_step(self, images, labels, indices, step)

    monkeypatch.setattr(Step, "__call__", crash_at_step_8)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tmp_path / "crashed", *overrides)
    monkeypatch.undo()
    run_dir = tmp_path / "crashed" / "run"
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 6
    run_job(compose(*QUICK, *overrides), run_dir, resume=True)  # continues from step 6

    lrs = lambda d: [(r["step"], r["train/lr"]) for r in read_metrics(d) if "train/lr" in r]  # noqa: E731
    assert lrs(run_dir) == lrs(straight) and len(lrs(straight)) == 12
    norms = np.loadtxt(run_dir / "grad_norms.csv", delimiter=",", skiprows=1)
    assert norms[:, 0].tolist() == list(range(12))  # one row per update, none written twice by the resume
    assert not norms[:, 2].any()  # SGD records no L1 norms (trainer.grad_norm_l1=auto)
    table = np.loadtxt(straight / "lr_schedule.csv", delimiter=",", skiprows=1)
    # metrics hold the lr of each logged step's update: update t is logged at step t + 1
    assert [lr for _, lr in lrs(straight)] == pytest.approx(table[:, 2])


# ---- end to end ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["constant", "step", "multistep", "cosine", "linear", "poly", "wsd", "uba"])
def test_every_schedule_trains_end_to_end(tmp_path, name):
    summary, run_dir = train(tmp_path, f"schedule={name}", *FAST)
    assert summary["status"] == "finished" and summary["steps"] == 4
    table = np.loadtxt(run_dir / "lr_schedule.csv", delimiter=",", skiprows=1)
    assert table.shape == (4, 3) and table[:, 0].tolist() == [0, 1, 2, 3]
    assert table[:, 2] == pytest.approx(0.1 * table[:, 1])  # sgd's lr times the factor
    assert (run_dir / "lr_schedule.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_adam_runs_record_l1_norms_and_refine_from_them(tmp_path):
    _, source = train(tmp_path / "first", "optimizer=adamw", "schedule=linear", *FAST)
    norms = np.loadtxt(source / "grad_norms.csv", delimiter=",", skiprows=1)
    assert (norms[:, 2] > norms[:, 1]).all()  # the L1 norm of a many-coordinate gradient exceeds its L2 norm
    summary, run_dir = train(tmp_path / "second", "optimizer=adamw", "schedule=refined",
                             f"schedule.source={source}", "schedule.smoothing=0", *FAST)
    factors = np.loadtxt(run_dir / "lr_schedule.csv", delimiter=",", skiprows=1)[:, 1]
    assert factors == pytest.approx(refined_curve(norms[:, 2], power=1))


def test_refined_workflow_through_divrun(tmp_path):
    """The two commands a user types: a linear run records gradient norms, a refined run reads them."""
    common = ["logger.progress=false", "trainer.device=cpu", "dataset.limit_train=512"]
    divrun("schedule=linear", "trainer.epochs=2", *common, cwd=tmp_path)
    (first,) = run_folders(tmp_path)
    norms = np.loadtxt(first / "grad_norms.csv", delimiter=",", skiprows=1)
    assert norms.shape == (8, 3) and (norms[:, 1] > 0).all()

    divrun("schedule=refined", f"schedule.source={first}", "trainer.epochs=3", *common, cwd=tmp_path)
    second = next(folder for folder in run_folders(tmp_path) if folder != first)
    assert read_summary(second)["status"] == "finished"
    lr = np.loadtxt(second / "lr_schedule.csv", delimiter=",", skiprows=1)[:, 2]
    assert len(lr) == 12 and lr.max() == pytest.approx(0.1) and lr[-1] == 0.0
    expected = np.interp(np.linspace(0, 1, 12), np.linspace(0, 1, 10_000), reference_pipeline(norms[:, 1], power=2))
    assert lr == pytest.approx(0.1 * expected / expected.max())


def test_refined_without_a_source_folder_fails_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="schedule.source=nowhere is not a divrun run folder"):
        train(tmp_path, "schedule=refined", "schedule.source=nowhere", *FAST)
