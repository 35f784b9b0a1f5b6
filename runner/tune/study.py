"""The Optuna side of a tune: one study per method, trials claimed by workers, each an ordinary divrun run.

Budget. Every study gets exactly `trials` finished (complete or pruned) trials. A worker claims a trial only
while fewer than that are finished, running or waiting; when two workers race for the last one, the trial
with the higher number is marked `surplus` and dropped (it never runs).

Interruptions. A trial whose worker died (kill -9, a lost node) is failed and re-queued with the same
parameters and the same run folder, so its divrun run continues from its checkpoint and the folder numbering
stays that of the first attempt: at start-up for a dead process of this machine, through Optuna's heartbeat
(RDBStorage heartbeat_interval / grace_period, retried by Optuna's stale-trial callback) for one on another machine. A
run that fails with a bug is retried the same way up to MAX_FAILURES times, then the method stops with its
error. A diverged run is a finished trial with the worst score (0 accuracy, infinite loss).

Sampling. The default sampler is Optuna's QMCSampler (scrambled Halton, seeded), given the declared space
from the first trial on (Optuna infers it from the first finished trial otherwise, sampling the first ones at
random) and indexed by the trial's folder number, so every worker draws point k of the sequence for trial-k,
and a retry its first attempt's point. TPE
(`--sampler tpe`, multivariate with the constant liar for parallel workers) is the option.
"""
from __future__ import annotations

import json
import math
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

try:  # Optuna >= 4.9
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry
    STALE_CALLBACK = "heartbeat_stale_trial_callback"
except ImportError:  # Optuna 4.0-4.8
    from optuna.storages import RetryFailedTrialCallback as Retry
    STALE_CALLBACK = "failed_trial_callback"

from runner import launch, run_folder
from runner.search_space import Space, overrides as space_overrides
from runner.tune.spec import Method, Spec

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# heartbeats are recorded by Watch while a trial's divrun process runs (ask/tell has no heartbeat thread)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
optuna.logging.set_verbosity(optuna.logging.WARNING)

DB_FILE, LOG_FILE = "studies.db", "tune.log"
HEARTBEAT_S, GRACE_S = 10, 60
MAX_FAILURES = 3
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
COUNTED = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
WORKER = f"{socket.gethostname()}:{__import__('os').getpid()}"


def default_storage(tune_dir: Path) -> str:
    return f"sqlite:///{Path(tune_dir).resolve() / DB_FILE}"


def open_storage(url: str) -> RDBStorage:
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                      **{STALE_CALLBACK: Retry(max_retry=None)})


class QuasiRandomSampler(optuna.samplers.QMCSampler):
    """Optuna's QMCSampler over the declared space from trial 0, point k of the sequence for the trial whose
    folder is trial-k (`ordinal`: unique across workers, where the sampler's own counter could hand two racing
    workers the same point; a retry, even of a trial killed before it drew its values, keeps its first
    attempt's point, and no point is skipped for the retries' own trial numbers)."""

    def __init__(self, space: dict, seed: int):
        super().__init__(qmc_type="halton", scramble=True, seed=seed, warn_independent_sampling=False,
                         warn_asynchronous_seeding=False)
        self.space, self.local = space, threading.local()

    def infer_relative_search_space(self, study, trial):
        return self.space

    def sample_relative(self, study, trial, search_space):
        self.local.number = ordinal(study.get_trials(deepcopy=False), trial)
        return super().sample_relative(study, trial, search_space)

    def _find_sample_id(self, study, search_space) -> int:  # noqa: D401 - QMCSampler's hook
        return self.local.number


def sampler_of(spec: Spec, space: Space):
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=spec.sampler_seed, multivariate=True, constant_liar=True)
    return QuasiRandomSampler(space.distributions(), spec.sampler_seed)


def pruner_of(spec: Spec):
    return optuna.pruners.MedianPruner() if spec.prune else optuna.pruners.NopPruner()


def open_study(spec: Spec, method: Method, storage, create: bool = False) -> optuna.Study:
    kwargs = dict(study_name=spec.study_name(method), storage=storage, sampler=sampler_of(spec, method.parsed_space()),
                  pruner=pruner_of(spec))
    if not create:
        return optuna.load_study(**kwargs)
    study = optuna.create_study(direction=spec.direction, load_if_exists=True, **kwargs)
    study.set_user_attr("divrun_tune", json.loads(spec.to_json()))
    study.set_user_attr("method", method.name)
    return study


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]


def counted(trials) -> int:
    return sum(1 for t in trials if t.state in COUNTED and not t.user_attrs.get("surplus"))


class Broken(RuntimeError):
    """A trial that failed MAX_FAILURES times: the method stops with its error."""


@dataclass
class Claim:
    spec: Spec
    method: Method
    study: optuna.Study
    trial: optuna.Trial


class Scheduler:
    """Hands out trials to this process's worker threads, study by study, fewest started first."""

    def __init__(self, spec: Spec, storage):
        self.spec, self.storage = spec, storage
        self.studies = {m.name: open_study(spec, m, storage) for m in spec.methods}
        self.lock = threading.Lock()
        self.broken: dict[str, str] = {}

    def claim(self) -> Claim | None:
        with self.lock:
            order = sorted(self.studies.items(), key=lambda item: counted(item[1].get_trials(deepcopy=False)))
            for name, study in order:
                if name in self.broken:
                    continue
                optuna.storages.fail_stale_trials(study)
                trial = claim(study, self.spec.trials)
                if trial is not None:
                    return Claim(self.spec, self.spec.method(name), study, trial)
        return None


def claim(study: optuna.Study, budget: int) -> optuna.Trial | None:
    """A trial of `study` to run, or None when its budget is finished, running or queued."""
    trials = study.get_trials(deepcopy=False)
    if counted(trials) >= budget and not any(t.state == TrialState.WAITING for t in trials):
        return None
    trial = study.ask()
    return trial if admit(study, trial, budget) else None


def admit(study: optuna.Study, trial: optuna.Trial, budget: int) -> bool:
    """Whether a just-asked trial is within the budget: fewer than `budget` live trials come before it.
    Two workers that both saw one trial left both ask; the later number is marked surplus and failed."""
    trials = study.get_trials(deepcopy=False)
    if counted([t for t in trials if t.number < trial.number]) >= budget:
        trial.set_user_attr("surplus", True)
        study.tell(trial, state=TrialState.FAIL)
        return False
    trial.set_user_attr("worker", WORKER)
    study._storage.record_heartbeat(trial._trial_id)  # from now on a dead worker's trial goes stale
    frozen = next(t for t in trials if t.number == trial.number)
    trial.set_user_attr("run_dir", frozen.user_attrs.get("run_dir") or f"{study.user_attrs['method']}/trial-"
                        f"{ordinal(trials, frozen):03d}")
    return True


def ordinal(trials, trial) -> int:
    """A trial's folder number: how many first attempts (not retries, not surplus) come before its first
    attempt, so folders count 0..N-1 however many retries the study holds."""
    first = Retry.retried_trial_number(trial)
    number = trial.number if first is None else first
    return sum(1 for t in trials if t.number < number and Retry.retried_trial_number(t) is None
               and not t.user_attrs.get("surplus"))


def recover(spec: Spec, storage) -> list[str]:
    """Fail and re-queue the running trials whose worker process on this machine is gone (kill -9), after
    their divrun job has stopped; returns their run folders."""
    host = socket.gethostname()
    recovered = []
    for method in spec.methods:
        study = open_study(spec, method, storage)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
            orphan = "worker" not in trial.user_attrs and time.time() - trial.datetime_start.timestamp() > GRACE_S
            if not orphan and (worker_host != host or not pid.isdigit() or launch.alive(int(pid))):
                continue  # another machine's (its heartbeat tells), or still alive
            launch.wait_for_exit(trial.user_attrs.get("pid"))
            try:
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except RuntimeError:  # another process recovered it first
                continue
            Retry(max_retry=None)(study, trial)
            recovered.append(trial.user_attrs.get("run_dir", f"trial {trial.number}"))
    return recovered


def run_overrides(spec: Spec, method: Method, values: dict, seed: int) -> list[str]:
    """The divrun overrides of one run: shared ones, the method's choices, the drawn values, the seed."""
    return [*spec.base, *method.choices, *space_overrides(values), f"seed={seed}", "trainer.resume=auto"]


def execute(claimed: Claim, slot: dict[str, str], on_event=None) -> tuple[str, float | None]:
    """Run one claimed trial to its end and tell the study; returns (outcome, score)."""
    spec, method, study, trial = claimed.spec, claimed.method, claimed.study, claimed.trial
    values = method.parsed_space().suggest(trial)
    trial.set_user_attr("values", values)
    run_dir = Path(spec.dir) / trial.user_attrs["run_dir"]
    watch = Watch(spec, study, trial, run_dir)
    status, detail = launch.run(run_overrides(spec, method, values, seed=0), run_dir, slot, LOG_FILE,
                                env={"WANDB_RUN_GROUP": spec.tune_id}, watch=watch,
                                started=lambda process: trial.set_user_attr("pid", process.pid))
    return tell(claimed, status, detail, run_dir, watch)


def tell(claimed: Claim, status: str, detail: str, run_dir: Path, watch: "Watch") -> tuple[str, float | None]:
    spec, study, trial = claimed.spec, claimed.study, claimed.trial
    trial.set_user_attr("status", status)
    if status == "finished":
        score = final_score(run_dir, spec.metric)
        if score is not None:
            study.tell(trial, score)
            return "finished", score
        status, detail = "failed", f"the run recorded no {spec.metric}; does the command hold data out (dataset.holdout)?"
    if status == "diverged":
        score = 0.0 if spec.higher_is_better else math.inf
        study.tell(trial, score)
        return "diverged", score
    if status == "stopped":  # pruned: the run stopped at an evaluation point
        mark_pruned(run_dir, detail)
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned", watch.last
    failures = int(trial.user_attrs.get("failures", 0)) + (status == "failed")
    trial.set_user_attr("failures", failures)
    trial.set_user_attr("error", detail)
    frozen = study.tell(trial, state=TrialState.FAIL)
    if failures >= MAX_FAILURES:
        raise Broken(f"{trial.user_attrs['run_dir']} failed {failures} times ({detail}); see its {LOG_FILE}, fix the "
                     f"cause, then divrun-tune --resume {spec.dir}")
    Retry(max_retry=None)(study, frozen)  # queued again: same values, same folder
    return status, None


class Watch:
    """Called about once a second while a trial runs: the trial's heartbeat, and its evaluations reported to
    the pruner; returns a reason when the pruner stops the trial."""

    def __init__(self, spec: Spec, study: optuna.Study, trial: optuna.Trial, run_dir: Path):
        self.spec, self.study, self.trial, self.run_dir = spec, study, trial, run_dir
        self.offset, self.beat, self.last = 0, 0.0, None

    def __call__(self, process) -> str | None:
        if time.time() - self.beat >= HEARTBEAT_S:
            self.study._storage.record_heartbeat(self.trial._trial_id)
            self.beat = time.time()
        if not self.spec.prune:
            return None
        for record in self.new_records():
            if self.spec.metric in record:
                self.last = record[self.spec.metric]
                self.trial.report(self.last, step=int(record["epoch"]))
                if self.trial.should_prune():
                    return (f"pruned by the median rule at epoch {record['epoch']}: {self.spec.metric} "
                            f"{self.last:.4f}")
        return None

    def new_records(self) -> list[dict]:
        path = self.run_dir / run_folder.METRICS
        if not path.exists():
            return []
        with open(path) as handle:
            handle.seek(self.offset)
            text = handle.read()
        complete = text[:text.rfind("\n") + 1]  # a line still being written waits for the next call
        self.offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


def final_score(run_dir: Path, metric: str) -> float | None:
    """The metric's value at the last evaluation of a run (last-epoch, as every divrun number)."""
    values = [r[metric] for r in run_folder.read_metrics(run_dir) if r.get(metric) is not None]
    return float(values[-1]) if values else None


def mark_pruned(run_dir: Path, reason: str) -> None:
    """A pruned trial's summary.json says so (it stopped through SIGTERM, which reads as preempted)."""
    summary = run_folder.read_summary(run_dir) or {}
    summary.update(status=run_folder.Status.PRUNED, error=reason)
    run_folder.write_summary(run_dir, summary)


def progress(spec: Spec, storage) -> dict[str, tuple[int, int]]:
    """(finished, running) trials per method."""
    out = {}
    for method in spec.methods:
        trials = open_study(spec, method, storage).get_trials(deepcopy=False)
        out[method.name] = (sum(t.state in FINISHED for t in trials), sum(t.state == TrialState.RUNNING for t in trials))
    return out
