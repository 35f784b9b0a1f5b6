"""One job = one run folder: save the resolved config, train (or continue), write summary.json."""
from __future__ import annotations

import importlib.resources
import json
import os
import time
import traceback
import uuid
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from runner import distributed, env
from runner.checkpoint import Checkpointer
from runner.errors import ConfigError
from runner.logger import RunLogger, read_meta, write_meta
from runner.nonfinite import Diverged
from runner.optim.scaling import apply_lr_scaling
from runner.preemption import Preempted, PreemptionWatch
from runner.validate import validate

CONFIG_FILE, SUMMARY_FILE = "config.yaml", "summary.json"
PATH_KEYS = {"root", "path", "source", "teacher", "checkpoint"}


def absolute_paths(node):
    """Paths in the config are relative to the launch directory; store them absolute so a run folder works
    from anywhere (resume, a teacher for distillation, a source for the refined schedule)."""
    if isinstance(node, dict):
        return {k: (os.path.abspath(v) if k in PATH_KEYS and isinstance(v, str) and _looks_local(k, v)
                    else absolute_paths(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [absolute_paths(v) for v in node]
    return node


def _looks_local(key: str, value: str) -> bool:
    return key == "root" or os.path.exists(value)


def save_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    resolved = OmegaConf.create(absolute_paths(OmegaConf.to_container(cfg, resolve=True)))
    # atomic: the nodes of a multi-node run each write the same file, and workers read it
    tmp = run_dir / f".{CONFIG_FILE}.{uuid.uuid4().hex}"
    tmp.write_text(OmegaConf.to_yaml(resolved))
    os.replace(tmp, run_dir / CONFIG_FILE)
    return resolved


def load_config(run_dir: Path) -> DictConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{run_dir} is not a divrun run folder (no {CONFIG_FILE}); pass the folder a run printed")
    # trainer and logger keys added to divrun after the run was made take their defaults
    conf = importlib.resources.files("runner.conf")
    defaults = {group: OmegaConf.load(conf / group / "default.yaml") for group in ("trainer", "logger")}
    return OmegaConf.merge(defaults, OmegaConf.load(path))


def write_summary(run_dir: Path, summary: dict) -> None:
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))


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
    cfg = cfg if resolved else save_config(apply_lr_scaling(cfg), run_dir)
    if launching:
        return launch_workers(cfg, run_dir, name, group)
    name, group = run_name(run_dir, name, group)
    if main:
        write_meta(run_dir, name=name, group=group)
    summary = {"name": name, "group": group, "status": "running", "run_dir": str(run_dir),
               **env.provenance(str(env.resolve_device(cfg.trainer.device)), distributed.world_size())}
    if main:
        write_summary(run_dir, summary)
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
        summary["status"] = "finished"
    except BaseException as error:
        summary |= (trainer.results() if trainer else {}) | outcome(error)
        raise
    finally:
        summary["wall_time_s"] = round(time.time() - started + read_previous_wall_time(payload), 3)
        if main:
            write_summary(run_dir, summary)
        logger.close(summary)
        if summary["status"] == "finished":
            logger.summary_table(summary)
    return summary


def run_name(run_dir: Path, name: str | None, group: str | None) -> tuple[str, str | None]:
    """The name and group given, else those recorded in the folder (a resume)."""
    meta = read_meta(run_dir)
    return name or meta.get("name") or "default", group or meta.get("group")


def launch_workers(cfg: DictConfig, run_dir: Path, name: str | None, group: str | None) -> dict:
    """Several processes: record the run's name, start the torchrun workers on the saved config.yaml and
    return the summary rank 0 wrote (other nodes of a multi-node run return an empty one)."""
    if distributed.is_first_node(cfg.trainer):
        name, group = run_name(run_dir, name, group)
        write_meta(run_dir, name=name, group=group)
    distributed.launch(cfg.trainer, run_dir)
    summary_file = run_dir / SUMMARY_FILE
    return json.loads(summary_file.read_text()) if summary_file.exists() else {}


def outcome(error: BaseException) -> dict:
    """summary.json fields for a run that stopped early: its status and why."""
    message = str(error) or type(error).__name__
    if isinstance(error, Diverged):
        return {"status": "diverged", "error": message, "diverged_at_step": error.step, "diverged_tensor": error.tensor}
    if isinstance(error, Preempted):
        return {"status": "preempted", "error": message}
    if isinstance(error, KeyboardInterrupt):
        return {"status": "interrupted", "error": "KeyboardInterrupt"}
    return {"status": "failed", "error": f"{type(error).__name__}: {message}",
            "traceback": traceback.format_exc(limit=20)}


def records_final_through(payload: dict | None) -> int:
    """The step up to which a resumed folder's records stand; later ones are dropped and written again. The
    steps a checkpoint holds unflushed statistics for are written by the resumed run, so they go too."""
    if not payload:
        return 0  # no checkpoint: the run starts over
    return payload["step"] - len(payload.get("pending_stats", ()))


def read_previous_wall_time(payload: dict | None) -> float:
    return float(payload.get("wall_time_s", 0.0)) if payload else 0.0
