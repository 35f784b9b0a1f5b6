"""The stability, curvature and calibration features end to end on digits: what each run writes (records,
summary, files), that measuring the curvature never changes the training, resume, StableMax and ⊥Grad runs."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import QUICK, compose, train
from runner.checkpoint import load
from runner.job import run_job
from runner.tables import recipe as tables_recipe
from runner.tables.results import raw_value

TINY = ("trainer.max_steps=10", "trainer.batch_size=128", "schedule=constant", "trainer.deterministic=true",
        "model.width=8", "trainer.log_every=5")
CURVATURE = ("trainer.curvature.every=5", "trainer.curvature.iters=3", "trainer.curvature.trace_probes=2",
             "trainer.curvature.samples=32", "trainer.curvature.track=4")


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_curvature_every_n_steps_leaves_the_training_as_it_was(tmp_path):
    summary, run = train(tmp_path / "with", *TINY, *CURVATURE)
    _, plain = train(tmp_path / "without", *TINY)
    hessian = [r for r in records(run) if "hessian/lambda_max" in r]
    assert [r["step"] for r in hessian] == [0, 5, 10]
    assert all(r["hessian/two_over_lr"] == pytest.approx(2 / 0.1) for r in hessian)  # sgd's lr, constant
    assert all(r["hessian/trace_stderr"] >= 0 and r["hessian/products"] == 3 + 2 for r in hessian)
    assert summary["final_hessian_lambda_max"] == hessian[-1]["hessian/lambda_max"]
    assert summary["final_hessian_trace"] == hessian[-1]["hessian/trace"]
    rows = (run / "sample_losses.csv").read_text().splitlines()
    assert rows[0].startswith("step,sample_") and len(rows[0].split(",")) == 5
    assert [row.split(",")[0] for row in rows[1:]] == ["0", "5", "10"]
    assert (run / "curvature.png").stat().st_size > 10_000
    # the probes' generator is private and the Hessian is taken in eval mode: the same weights, the same records
    a, b = load(run / "checkpoints" / "last.pt"), load(plain / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    train_records = lambda folder: [{k: v for k, v in r.items() if k != "train/img_per_s"}  # noqa: E731
                                    for r in records(folder) if "train/loss" in r]
    assert train_records(run) == train_records(plain)


def test_a_resumed_run_measures_what_an_uninterrupted_one_does(tmp_path):
    steps = ("trainer.checkpoint_every_steps=5", "trainer.checkpoint_every=null")
    _, full = train(tmp_path / "full", *TINY, *CURVATURE, *steps)
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    (resumed / "checkpoints" / "step_000000010.pt").unlink()  # as if killed after the checkpoint at step 5
    run_job(compose(*QUICK, *TINY, *CURVATURE, *steps), resumed, resume=True)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "hessian/seconds"} for r in rs if "hessian/loss" in r]  # noqa: E731
    assert [r["step"] for r in strip(records(resumed))] == [0, 5, 10]
    assert strip(records(resumed)) == strip(records(full))
    assert (resumed / "sample_losses.csv").read_text() == (full / "sample_losses.csv").read_text()


def test_calibration_metrics_with_ten_bins(tmp_path):
    summary, run = train(tmp_path, *TINY, "eval.ece_bins=10", "trainer.log_every=1")
    final = [r for r in records(run) if "val/ece" in r][-1]
    assert {"val/aurc", "val/eaurc"} <= set(final) and 0 <= final["val/eaurc"] <= final["val/aurc"] <= 1
    assert summary["final_val_aurc"] == final["val/aurc"] and summary["final_val_ece"] == final["val/ece"]
    assert (run / "reliability.png").stat().st_size > 10_000
    assert all(0 <= r["train/softmax_collapse"] <= 1 for r in records(run) if "train/loss" in r)
    first = next(r for r in records(run) if "train/loss" in r)
    assert first["step"] == 1 and summary["initial_train_loss"] == first["train/loss"]  # the loss before any update
    assert summary["final_train_softmax_collapse"] is not None
    pskd = tables_recipe.load("pskd_cifar100")  # its ECE and AURC columns, measured by such a run
    assert "eval.ece_bins=10" in pskd.protocol
    values = {name: raw_value(run, metric) for name, metric in pskd.metrics.items()}
    assert values["ece"] == pytest.approx(100 * final["val/ece"])
    assert values["aurc"] == pytest.approx(1000 * final["val/aurc"])
    assert None not in values.values()


def test_temperature_scaling_is_fitted_on_the_holdout_split_of_the_final_model(tmp_path):
    from runner.build import build_run
    from runner.calibration import fit_temperature
    from runner.evaluation import evaluation_pass

    summary, run = train(tmp_path, *TINY, "eval.calibrate=temperature", "dataset.holdout=0.2")
    final = [r for r in records(run) if "calibrated/nll" in r][-1]
    assert {"holdout/acc1", "holdout/nll", "calibrated/ece", "calibrated/aurc", "val/nll"} <= set(final)
    assert summary["final_calibrated_temperature"] == final["calibrated/temperature"]
    # the fit, again by hand: the final model's logits on the holdout split alone
    rebuilt = build_run(compose(*QUICK, *TINY, "eval.calibrate=temperature", "dataset.holdout=0.2"))
    rebuilt.model.load_state_dict(load(run / "checkpoints" / "last.pt")["model"])
    held, _ = evaluation_pass(rebuilt.model, rebuilt.eval_loaders["holdout"], *rebuilt.evaluation_settings(),
                              keep_logits=True)
    assert fit_temperature(held.logits, held.labels) == pytest.approx(final["calibrated/temperature"], rel=1e-6)
    assert (run / "reliability.png").stat().st_size > 20_000  # two panels: the test split, calibrated


def test_divrun_eval_calibrate_holds_out_ten_percent_unless_told(capsys):
    from runner.cli import with_calibration_holdout

    assert with_calibration_holdout(["eval.ece_bins=10", "eval.calibrate=temperature"])[-1] == "dataset.holdout=0.1"
    assert "10% of the training set is held out" in capsys.readouterr().err
    for args in (["eval.calibrate=temperature", "dataset.holdout=100"], ["eval.ece_bins=10"],
                 ["eval.calibrate=null"], ["eval.calibrate=platt"]):
        assert with_calibration_holdout(args) == args


def test_the_collapse_fraction_counts_collapsed_samples(tmp_path):
    """A learning rate far too large drives the logits apart until float32 softmax saturates (~70% of the
    first 10 steps' samples here), then the network recovers."""
    summary, run = train(tmp_path, "model=mlp", "trainer.max_steps=20", "trainer.batch_size=128", "schedule=constant",
                         "optimizer.lr=30", "optimizer.momentum=0", "trainer.log_every=10", "trainer.on_nonfinite=skip")
    collapse = [r["train/softmax_collapse"] for r in records(run) if "train/loss" in r]
    assert collapse[0] > 0.3 and summary["final_train_softmax_collapse"] == collapse[-1]


def test_stablemax_trains_digits(tmp_path):
    fast = ("trainer.batch_size=32", "trainer.epochs=2")
    summary, _ = train(tmp_path / "stablemax", "loss=ce", "loss.normalizer=stablemax", *fast)
    assert summary["status"] == "finished" and summary["final_val_acc1"] >= 0.9, summary["final_val_acc1"]


def test_two_processes_measure_the_curvature_and_aurc_of_one(tmp_path):
    """mlp (no BatchNorm), 2 gloo processes with half the batch each: the weights agree with one process's up to
    float summation order, each process holds half of the curvature samples and the products are averaged."""
    from conftest import divrun, run_folders

    common = ("model=mlp", "trainer.max_steps=6", "trainer.log_every=3", "dataset.limit_val=359", "seed=3",
              "logger.progress=false", "trainer.device=cpu", "trainer.curvature.every=3", "trainer.curvature.iters=4",
              "trainer.curvature.trace_probes=3", "trainer.curvature.samples=64")
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    divrun(*common, "trainer.devices=1", "trainer.batch_size=64", cwd=tmp_path / "one")
    divrun(*common, "trainer.devices=2", "trainer.batch_size=32", cwd=tmp_path / "two")
    [one], [two] = run_folders(tmp_path / "one"), run_folders(tmp_path / "two")
    measured = lambda folder: [r for r in records(folder) if "hessian/loss" in r]  # noqa: E731
    assert [r["step"] for r in measured(two)] == [r["step"] for r in measured(one)] == [0, 3, 6]
    for a, b in zip(measured(one), measured(two)):
        for key in ("hessian/loss", "hessian/lambda_max", "hessian/trace"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    last_one, last_two = ([r for r in records(folder) if "val/aurc" in r][-1] for folder in (one, two))
    assert last_two["val/aurc"] == pytest.approx(last_one["val/aurc"], abs=1e-6)
    assert last_two["val/ece"] == pytest.approx(last_one["val/ece"], abs=1e-6)
