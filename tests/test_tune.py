"""divrun-tune: the expected maximum against brute force, the quasi-random sequence against scipy, the
budget (exactly N trials, no duplicates, races), bad input, and the whole tune on digits: killed with
kill -9 in the middle of the search, resumed, compared."""
from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from scipy.stats import qmc

from runner.tune.expected_max import expected_max
from runner.tune.spec import Method, Spec
from runner.tune import study as studies

EXE = Path(sys.executable).with_name("divrun-tune")
ENV = {**os.environ, "WANDB_MODE": "disabled"}


def tune(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXE), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV)


# ---- expected maximum (Dodge et al. 2019) -------------------------------------------------------------------

@pytest.mark.parametrize("scores", [[0.3, 0.9, 0.5, 0.7, 0.1], [0.5, 0.5, 0.2, 0.9, 0.9]])
def test_expected_max_equals_the_mean_over_every_k_tuple_of_trials(scores):
    for k in (1, 2, 3):
        best = [max(tup) for tup in itertools.product(scores, repeat=k)]  # all N^k equally likely draws
        mean, std = expected_max(scores, k)
        assert mean == pytest.approx(np.mean(best), abs=1e-12) and std == pytest.approx(np.std(best), abs=1e-12)
        worst = [min(tup) for tup in itertools.product(scores, repeat=k)]
        assert expected_max(scores, k, higher_is_better=False)[0] == pytest.approx(np.mean(worst), abs=1e-12)
    assert expected_max(scores, 1)[0] == pytest.approx(np.mean(scores))
    assert expected_max(scores, 200)[0] == pytest.approx(max(scores), abs=1e-6)


# ---- sampling and the budget ------------------------------------------------------------------------------------

def spec_for(tmp_path: Path, space: dict, trials: int = 4, sampler: str = "qmc") -> tuple[Spec, Method]:
    method = Method("m", ["optimizer=sgd"], space)
    return Spec("t-1", str(tmp_path), [method], [], trials, 1, sampler), method


def test_trial_k_is_point_k_of_the_scrambled_halton_sequence_from_the_first_trial(tmp_path):
    space = {"optimizer.lr": {"low": 1e-5, "high": 1e-1, "log": True}, "optimizer.momentum": {"low": 0.5, "high": 0.99}}
    spec, method = spec_for(tmp_path, space)
    storage = studies.open_storage(studies.default_storage(tmp_path))
    study = studies.open_study(spec, method, storage, create=True)
    drawn = []
    for _ in range(5):
        trial = study.ask()
        drawn.append(method.parsed_space().suggest(trial))
        study.tell(trial, 0.5)
    # Optuna orders the dimensions by name; the log one is sampled in log space
    points = qmc.Halton(2, scramble=True, seed=0).random(5)
    for (lr_u, momentum_u), values in zip(points, drawn):
        assert values["optimizer.lr"] == pytest.approx(math.exp(math.log(1e-5) + lr_u * (math.log(1e-1) - math.log(1e-5))))
        assert values["optimizer.momentum"] == pytest.approx(0.5 + momentum_u * 0.49)


def test_a_trial_killed_before_it_drew_keeps_its_point_and_no_point_is_skipped(tmp_path):
    space = {"optimizer.lr": {"low": 1e-5, "high": 1e-1, "log": True}}
    spec, method = spec_for(tmp_path, space, trials=3)
    storage = studies.open_storage(studies.default_storage(tmp_path))
    study = studies.open_study(spec, method, storage, create=True)
    lr = lambda u: math.exp(math.log(1e-5) + u * (math.log(1e-1) - math.log(1e-5)))  # noqa: E731
    points = [lr(u) for (u,) in qmc.Halton(1, scramble=True, seed=0).random(3)]
    first = studies.claim(study, 3)
    assert method.parsed_space().suggest(first)["optimizer.lr"] == pytest.approx(points[0])
    study.tell(first, 0.5)
    killed = studies.claim(study, 3)  # its worker dies before it draws its values
    storage.set_trial_state_values(killed._trial_id, optuna.trial.TrialState.FAIL)
    studies.Retry(max_retry=None)(study, study.trials[killed.number])
    drawn = {}
    for _ in range(2):
        trial = studies.claim(study, 3)
        drawn[trial.user_attrs["run_dir"]] = method.parsed_space().suggest(trial)["optimizer.lr"]
        study.tell(trial, 0.5)
    assert drawn == {"m/trial-001": pytest.approx(points[1]), "m/trial-002": pytest.approx(points[2])}


def test_the_budget_is_exact_and_a_racing_worker_gets_a_surplus_trial_that_never_runs(tmp_path):
    spec, method = spec_for(tmp_path, {"optimizer.lr": {"low": 1e-3, "high": 1.0, "log": True}}, trials=3)
    storage = studies.open_storage(studies.default_storage(tmp_path))
    mine = studies.open_study(spec, method, storage, create=True)
    theirs = studies.open_study(spec, method, storage)  # another worker's handle on the same study
    assert studies.claim(mine, 3) is not None and studies.claim(theirs, 3) is not None
    # both workers saw one trial left and asked before either checked: the lower number runs
    first, second = mine.ask(), theirs.ask()
    assert studies.admit(theirs, second, 3) is False and studies.admit(mine, first, 3) is True
    assert studies.claim(mine, 3) is None and studies.claim(theirs, 3) is None
    trials = {t.number: t for t in mine.get_trials(deepcopy=False)}
    assert trials[second.number].user_attrs.get("surplus") and trials[second.number].state == optuna.trial.TrialState.FAIL
    assert studies.counted(trials.values()) == 3 and len(trials) == 4


def test_the_median_pruner_stops_a_trial_below_the_median_at_an_evaluation_point(tmp_path):
    spec, method = spec_for(tmp_path, {"optimizer.lr": {"low": 1e-3, "high": 1.0, "log": True}})
    spec.prune = True
    storage = studies.open_storage(studies.default_storage(tmp_path))
    study = studies.open_study(spec, method, storage, create=True)
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=1)
    earlier = studies.claim(study, 4)
    earlier.report(0.9, step=1)
    study.tell(earlier, 0.95)
    claimed = studies.Claim(spec, method, study, studies.claim(study, 4))
    run_dir = tmp_path / claimed.trial.user_attrs["run_dir"]
    run_dir.mkdir(parents=True)
    watch = studies.Watch(spec, study, claimed.trial, run_dir)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 5, "epoch": 0.5, "train/loss": 1.0}) + "\n")
    assert watch(None) is None  # no evaluation yet
    with open(run_dir / "metrics.jsonl", "a") as records:
        records.write(json.dumps({"step": 10, "epoch": 1, "holdout/acc1": 0.5}) + "\n" + '{"step": 1')  # half a line
    reason = watch(None)
    assert reason == "pruned by the median rule at epoch 1: holdout/acc1 0.5000"
    (run_dir / "summary.json").write_text(json.dumps({"status": "preempted"}))
    assert studies.tell(claimed, "stopped", reason, run_dir, watch) == ("pruned", 0.5)
    assert json.loads((run_dir / "summary.json").read_text()) == {"status": "pruned", "error": reason}
    assert study.trials[-1].state == optuna.trial.TrialState.PRUNED


# ---- bad input: one line, nothing written --------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["model=mlp"], "model=mlp has no search space: add a `search_space:` key to conf/model/mlp.yaml"),
    (["optimizer=sgd", "--trials", "0"], "--trials 0: each method needs at least one trial; pass e.g. --trials 20"),
    (["optimizer=sgd", "--space", "optimizer.lr={low: 0.5, high: 0.01, log: true}"],
     "--space optimizer.lr (sgd): reversed bounds (low 0.5 > high 0.01); swap them"),
    (["optimizer=sgd", "--", "optimizer.lr=-1"], "optimizer.lr=-1: the learning rate must be > 0"),
    (["optimizer.lr=0.1"], "optimizer.lr=0.1: optimizer.lr is not a config group"),
    (["optimizer=sgd", "--", "dataset.holdout=null"], "dataset.holdout=null: divrun-tune selects on the holdout split"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "tune"
    result = tune("--out", str(out), *args, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert lines[0].startswith("divrun-tune: error: ") and not out.exists()


def test_resume_refuses_a_folder_of_another_kind(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    result = tune("--resume", str(run), cwd=tmp_path)
    assert result.returncode == 2 and f"this is a divrun run folder, not a tune folder; continue it with `divrun resume={run}`" in result.stderr
    result = tune("--resume", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and "not a divrun-tune folder (no tune.json)" in result.stderr


# ---- the whole tune, killed and resumed (the "done when") ----------------------------------------------

def completed(db: Path) -> dict[str, list]:
    storage = f"sqlite:///{db}"
    out = {}
    for name in optuna.get_all_study_names(storage):
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        out[name.rsplit("/", 1)[-1]] = trials
    return out


def test_digits_tune_survives_kill_9_and_ends_with_six_trials_per_study_and_the_comparison(tmp_path):
    """divrun-tune optimizer=sgd,lion --trials 6 --seeds 2 --out DIR -- trainer.epochs=3, killed with SIGKILL
    while trials run, then --resume: 6 completed trials per study, none repeated, an interrupted trial
    continued in its own folder; the re-runs and the comparison; tuned Lion >= 90% holdout accuracy."""
    out = tmp_path / "tune"
    argv = [str(EXE), "optimizer=sgd,lion", "--trials", "6", "--seeds", "2", "--jobs", "2", "--out", str(out),
            "--", "trainer.epochs=3"]
    started = time.time()
    process = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = out / studies.DB_FILE
    while time.time() - started < 600:  # kill once 3 trials are done and others are running
        time.sleep(0.5)
        if db.exists():
            try:
                trials = [t for ts in completed(db).values() for t in ts]
            except Exception:  # noqa: BLE001 - the database is being created
                continue
            done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
            running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and "pid" in t.user_attrs]
            if done >= 3 and running:
                break
    assert process.poll() is None, process.stderr.read().decode()[-3000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted = [t.user_attrs["run_dir"] for ts in completed(db).values() for t in ts
                   if t.state == optuna.trial.TrialState.RUNNING]
    assert interrupted
    result = tune("--resume", str(out), "--jobs", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "was interrupted; it runs again from its checkpoint" in result.stderr
    for method, trials in completed(db).items():
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(done) == 6, method
        folders = [t.user_attrs["run_dir"] for t in done]
        assert sorted(folders) == [f"{method}/trial-{k:03d}" for k in range(6)]  # none repeated, numbering kept
        assert len({json.dumps(t.params, sort_keys=True) for t in done}) == 6
        for folder in folders:  # each folder holds one uninterrupted-looking run: every eval record once
            records = [json.loads(l) for l in (out / folder / "metrics.jsonl").read_text().splitlines()]
            assert [r["epoch"] for r in records if "holdout/acc1" in r] == [1, 2, 3], folder
    comparison = pd.read_csv(out / "comparison.csv")
    assert sorted(comparison.method) == ["lion", "sgd"] and (comparison["final_val_acc1.n"] == 2).all()
    assert (comparison["final_holdout_acc1.n"] == 2).all()  # runner.comparison's table, holdout beside test
    for method in ("sgd", "lion"):
        for kind in ("best", "default"):
            for seed in (1, 2):
                assert json.loads((out / method / kind / f"seed{seed}" / "summary.json").read_text())["status"] == "finished"
    best = json.loads((out / "best_params.json").read_text())
    assert best["lion"]["holdout/acc1"] >= 0.9, best["lion"]
    curve = pd.read_csv(out / "expected_max.csv")
    assert len(curve) == 12 and (curve.groupby("method").expected_best.diff().dropna() >= -1e-12).all()
    for name in ("comparison.md", "comparison.json", "comparison.png", "expected_max.png", "tuned_vs_default.csv"):
        assert (out / name).exists(), name
    page = (out / "comparison.md").read_text()
    assert all(title in page for title in ("## Best hyperparameters", "## Tuned against default", "## Expected best"))
    print(f"tune took {time.time() - started:.0f} s; lion best {best['lion']}")


# ---- a study shared through PostgreSQL ---------------------------------------------------------------------------

def unavailable(reason: str):
    """CI starts a server (.ci/run), so there a missing one is a failure; elsewhere the test skips."""
    (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)


@pytest.fixture
def postgres_url():
    """A fresh database on the server of DIVRUN_TEST_POSTGRES_URL (.ci/run's), else on a throwaway server."""
    import shutil
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    import postgres

    try:
        import psycopg
    except ImportError:
        unavailable("PostgreSQL tests need psycopg: pip install -e '.[postgres]'")
    server_dir, url = None, os.environ.get("DIVRUN_TEST_POSTGRES_URL")
    if not url:
        server_dir = Path(tempfile.mkdtemp(prefix="divrun-pg-"))  # outside pytest's root-only tmp: the server user reads it
        try:
            url = postgres.start(server_dir)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
            shutil.rmtree(server_dir, ignore_errors=True)
            unavailable(f"no PostgreSQL server could be started here ({error})")
    name = f"divrun_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(f"{url}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    yield f"{url.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    if server_dir:
        postgres.stop(server_dir)
        shutil.rmtree(server_dir, ignore_errors=True)


def test_two_workers_share_one_postgresql_study_without_duplicate_trials(tmp_path, postgres_url):
    out = tmp_path / "tune"
    driver = subprocess.Popen([str(EXE), "optimizer=sgd", "--trials", "6", "--seeds", "1", "--storage", postgres_url,
                               "--out", str(out), "--", "trainer.epochs=2", "dataset.limit_train=512"],
                              cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not optuna.get_all_study_names(postgres_url) and time.time() < deadline:
        time.sleep(0.5)
    worker = subprocess.run([str(EXE), "--worker", "--storage", postgres_url], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True, timeout=900)
    _, errors = driver.communicate(timeout=900)
    assert worker.returncode == 0 and driver.returncode == 0, worker.stderr[-3000:] + errors[-3000:]
    [name] = optuna.get_all_study_names(postgres_url)
    trials = optuna.load_study(study_name=name, storage=postgres_url).get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 6 and not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert sorted(t.user_attrs["run_dir"] for t in done) == [f"sgd/trial-{k:03d}" for k in range(6)]
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == 6
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both processes ran trials
    assert (out / "comparison.csv").exists() and "postgresql+psycopg://postgres@127.0.0.1" in (out / "tune.json").read_text()
