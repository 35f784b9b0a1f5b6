"""One job = one run folder. In order: the pre-flight (runner/validate.py), the checkpoint read (a resume), the
run built (runner/build.py) and restored; only then the folder is written (config.yaml, meta.json,
summary.json "running", the lr schedule), the loop trains, and summary.json records how it ended. Bad input
found on the way leaves the folder as it was; a bug while building is recorded in the folder with its
traceback. Under torchrun the launching process saves the config and starts the workers, which do the rest.
"""
from __future__ import annotations

import time
import traceback
from pathlib import Path

from omegaconf import DictConfig

from runner import distributed, env, run_folder
from runner.checkpoint import Checkpointer
from runner.curves import write_run_curves
from runner.errors import ConfigError, require
from runner.logger import RunLogger, console
from runner.optim.scaling import apply_lr_scaling
from runner.preemption import PreemptionWatch
from runner.run_folder import Status
from runner.validate import validate


def run_job(cfg: DictConfig, run_dir: Path, name: str | None = None, group: str | None = None,
            resolved: bool = False, resume: bool | None = None) -> dict:
    """Train `cfg` in `run_dir`. With `resume` (default: trainer.resume=auto) continue from the folder's newest
    readable checkpoint (from step 0 if it has none); without it a folder that holds checkpoints is refused.
    Nothing is written before the config has been validated, the checkpoint read and the run built and
    restored: bad input found on the way (a ConfigError) leaves the folder as it was."""
    from runner.train import Trainer  # torch-heavy; keep `divrun --help` fast

    warnings = validate(cfg)  # printed by the process that trains, once it logs
    run_dir = Path(run_dir).resolve()
    main = distributed.is_main()  # under torchrun, rank 0 alone writes the folder
    checkpointer = Checkpointer(run_dir, keep=cfg.trainer.keep_checkpoints, enabled=main)
    resume = cfg.trainer.resume == "auto" if resume is None else resume
    require(overwrite_problems(run_dir, resume))
    if distributed.should_launch(cfg.trainer):  # the torchrun workers build the run and read the checkpoint
        run_dir.mkdir(parents=True, exist_ok=True)
        return launch_workers(cfg if resolved else run_folder.save_config(apply_lr_scaling(cfg), run_dir), run_dir,
                              name, group)
    payload = checkpointer.load() if resume else None
    cfg = cfg if resolved else run_folder.resolved_config(apply_lr_scaling(cfg))
    name, group = run_name(run_dir, name, group)
    summary = {"name": name, "group": group, "status": Status.RUNNING, "run_dir": str(run_dir),
               **env.provenance(str(env.resolve_device(cfg.trainer.device)), distributed.world_size())}
    folder = RunFolderWriter(cfg, run_dir, summary, main, resolved, payload)
    with PreemptionWatch() as preemption:
        try:
            trainer = Trainer.from_config(cfg, checkpointer, preemption, console.print if main else print_nothing)
            if payload:
                trainer.restore(payload)
        except ConfigError:
            raise  # bad input: nothing written
        except BaseException as error:  # a bug while building: the folder records it, with the traceback
            folder.start()
            folder.finish(outcome(error))
            raise
        folder.start(trainer.run)
        logger = RunLogger(cfg, run_dir, name, group, enabled=main,
                           resume_step=records_final_through(payload) if resume else None)
        for warning in warnings:
            logger.print(f"[yellow]warning: {warning}")
        try:
            if payload:
                logger.print(f"divrun: resuming {run_dir} at step {trainer.progress.step} (epoch {trainer.progress.epoch})")
            summary |= trainer.fit(logger)
            folder.figures(trainer)
            summary["status"] = Status.FINISHED
        except BaseException as error:
            summary |= trainer.results() | outcome(error)
            raise
        finally:
            folder.finish(logger=logger)
    return summary


def print_nothing(message: str) -> None:
    """Ranks other than 0 stay quiet."""


class RunFolderWriter:
    """What run_job writes, in order: the folder's opening files once the run is built, summary.json and
    curves.png at the end."""

    def __init__(self, cfg: DictConfig, run_dir: Path, summary: dict, main: bool, resolved: bool,
                 payload: dict | None):
        self.cfg, self.run_dir, self.summary, self.main, self.resolved = cfg, run_dir, summary, main, resolved
        self.previous_wall_time, self.started = payload["wall_time_s"] if payload else 0.0, time.time()

    def start(self, run=None) -> None:
        """config.yaml, meta.json, summary.json (running) and the lr schedule of a built `run`."""
        if not self.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.resolved:
            run_folder.save_config(self.cfg, self.run_dir)
        run_folder.write_meta(self.run_dir, name=self.summary["name"], group=self.summary["group"])
        run_folder.write_summary(self.run_dir, self.summary)
        if run is not None:
            factors, positions, unit, per_epoch = run.schedule_points()
            run_folder.write_lr_schedule(self.run_dir, factors, run.driver.base_lrs[0], per_epoch,
                                         type(run.schedule).__name__, positions, unit)

    def figures(self, trainer) -> None:
        """The finished run's reliability.png (eval.reliability) and curvature.png (trainer.curvature)."""
        if not self.main:
            return
        if self.cfg.eval.reliability and trainer.reliability:
            run_folder.write_reliability(self.run_dir, trainer.reliability, f"{self.summary['name']}: "
                                         f"epoch {trainer.progress.epoch}, step {trainer.progress.step}")
        if self.cfg.trainer.curvature.every:
            run_folder.write_curvature(self.run_dir)

    def finish(self, outcome_fields: dict | None = None, logger: RunLogger | None = None) -> None:
        summary = self.summary
        summary |= outcome_fields or {}
        summary["wall_time_s"] = round(time.time() - self.started + self.previous_wall_time, 3)
        if self.main:
            run_folder.write_summary(self.run_dir, summary)
        if logger is None:
            return
        logger.close(summary)
        if self.main and summary["status"] != Status.INTERRUPTED:  # Ctrl-C: out at once
            write_run_curves(self.run_dir)
        if summary["status"] == Status.FINISHED:
            logger.summary_table(summary)


def overwrite_problems(run_dir: Path, resume: bool) -> list[str]:
    """A folder holding a run's checkpoints is continued, never started over."""
    if resume or not Checkpointer(run_dir).exists():
        return []
    return [f"{run_dir} already holds a run's checkpoints; continue it with trainer.resume=auto "
            f"(or divrun resume={run_dir}) or choose a new hydra.run.dir"]


def run_name(run_dir: Path, name: str | None, group: str | None) -> tuple[str, str | None]:
    """The name and group given, else those recorded in the folder (a resume)."""
    meta = run_folder.read_meta(run_dir)
    return name or meta.get("name") or "default", group or meta.get("group")


def launch_workers(cfg: DictConfig, run_dir: Path, name: str | None, group: str | None) -> dict:
    """Several processes: record the run's name, start the torchrun workers on the saved config.yaml and
    return the summary rank 0 wrote (other nodes of a multi-node run return an empty one)."""
    if distributed.is_first_node(cfg.trainer):
        name, group = run_name(run_dir, name, group)
        run_folder.write_meta(run_dir, name=name, group=group)
    distributed.launch(cfg.trainer, run_dir)
    return run_folder.read_summary(run_dir) or {}


def outcome(error: BaseException) -> dict:
    """summary.json fields for a run that stopped early: its status and why."""
    status, _ = run_folder.outcome(error)
    message = str(error) or type(error).__name__
    if status is Status.DIVERGED:
        return {"status": status, "error": message, "diverged_at_step": error.step, "diverged_tensor": error.tensor}
    if status is Status.PREEMPTED:
        return {"status": status, "error": message}
    if status is Status.INTERRUPTED:
        return {"status": status, "error": "KeyboardInterrupt"}
    return {"status": status, "error": f"{type(error).__name__}: {message}", "traceback": traceback.format_exc(limit=20)}


def records_final_through(payload: dict | None) -> int:
    """The step up to which a resumed folder's records stand; later ones are dropped and written again. The
    steps a checkpoint holds unflushed statistics for are written by the resumed run, so they go too."""
    if not payload:
        return 0  # no checkpoint: the run starts over
    return payload["step"] - len(payload["pending_stats"])
