"""One job = one run folder: save the resolved config, train (or continue), write summary.json."""
from __future__ import annotations

import time
import traceback
from pathlib import Path

from omegaconf import DictConfig

from runner import distributed, env, run_folder
from runner.checkpoint import Checkpointer
from runner.errors import ConfigError
from runner.logger import RunLogger
from runner.optim.scaling import apply_lr_scaling
from runner.preemption import PreemptionWatch
from runner.run_folder import Status
from runner.validate import validate


def run_job(cfg: DictConfig, run_dir: Path, name: str | None = None, group: str | None = None,
            resolved: bool = False, resume: bool | None = None) -> dict:
    """Train `cfg` in `run_dir`. With `resume` (default: trainer.resume=auto) continue from the folder's newest
    readable checkpoint (from step 0 if it has none); without it a folder that holds checkpoints is refused.
    Nothing is written before the config has been validated and the checkpoint read."""
    from runner.train import Trainer  # torch-heavy; keep `divrun --help` fast

    validate(cfg)
    run_dir = Path(run_dir).resolve()
    main = distributed.is_main()  # under torchrun, rank 0 alone writes the folder
    checkpointer = Checkpointer(run_dir, keep=cfg.trainer.keep_checkpoints, enabled=main)
    resume = cfg.trainer.resume == "auto" if resume is None else resume
    if not resume and checkpointer.exists():
        raise ConfigError(f"{run_dir} already holds a run's checkpoints; continue it with trainer.resume=auto "
                          f"(or divrun resume={run_dir}) or choose a new hydra.run.dir")
    launching = distributed.should_launch(cfg.trainer)  # the torchrun workers read the checkpoint themselves
    payload = checkpointer.load() if resume and not launching else None
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = cfg if resolved else run_folder.save_config(apply_lr_scaling(cfg), run_dir)
    if launching:
        return launch_workers(cfg, run_dir, name, group)
    name, group = run_name(run_dir, name, group)
    if main:
        run_folder.write_meta(run_dir, name=name, group=group)
    summary = {"name": name, "group": group, "status": Status.RUNNING, "run_dir": str(run_dir),
               **env.provenance(str(env.resolve_device(cfg.trainer.device)), distributed.world_size())}
    if main:
        run_folder.write_summary(run_dir, summary)
    logger = RunLogger(cfg, run_dir, name, group, enabled=main,
                       resume_step=records_final_through(payload) if resume else None)
    started, trainer = time.time(), None
    try:
        with PreemptionWatch() as preemption:
            trainer = Trainer(cfg, run_dir, logger, checkpointer, preemption)
            if payload:
                trainer.restore(payload)
                logger.print(f"divrun: resuming {run_dir} at step {trainer.step} (epoch {trainer.epoch})")
            summary |= trainer.fit()
        summary["status"] = Status.FINISHED
    except BaseException as error:
        summary |= (trainer.results() if trainer else {}) | outcome(error)
        raise
    finally:
        summary["wall_time_s"] = round(time.time() - started + (payload["wall_time_s"] if payload else 0.0), 3)
        if main:
            run_folder.write_summary(run_dir, summary)
        logger.close(summary)
        if summary["status"] == Status.FINISHED:
            logger.summary_table(summary)
    return summary


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
