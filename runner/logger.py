"""Where metrics go: metrics.jsonl and grad_norms.csv (always, through runner/run_folder.py `RecordFiles`), rich
progress bars and tables on the console, and wandb.

Only the process that owns the run folder logs (rank 0 under DDP); `RunLogger(enabled=False)` is silent.
"""
from __future__ import annotations

import netrc
import os
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from runner.run_folder import RecordFiles, Status, read_meta, write_meta

console = Console(stderr=True)


class RunLogger:
    def __init__(self, cfg: DictConfig, run_dir: Path, name: str, group: str | None, enabled: bool = True,
                 resume_step: int | None = None):
        self.run_dir, self.enabled, self.cfg = Path(run_dir), enabled, cfg
        self.progress: Progress | None = None
        self.wandb_run = None
        if not enabled:
            return
        self.files = RecordFiles(self.run_dir, resume_step)
        self._start_wandb(name, group)

    # ---- records -------------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.files.write_record(record)
        if self.wandb_run is not None:
            try:
                self.wandb_run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
            except Exception as error:  # noqa: BLE001 - a wandb failure must never cost the local results
                warnings.warn(f"wandb: logging failed ({error}); wandb is off for this run, metrics.jsonl is complete")
                self.wandb_run = None

    def log_grad_norms(self, first_step: int, rows: list[tuple[float, float]]) -> None:
        if self.enabled:
            self.files.write_grad_norms(first_step, rows)

    def log_sample_losses(self, step: int, samples: list[int], losses: list[float]) -> None:
        if self.enabled:
            self.files.write_sample_losses(step, samples, losses)

    def print(self, message: str) -> None:
        if self.enabled:
            (self.progress.console if self.progress else console).print(message)

    # ---- progress bars -------------------------------------------------------------------------------
    def start_progress(self, total_steps: int, epochs: int, steps_per_epoch: int, done_steps: int, done_epochs: int):
        if not (self.enabled and self.cfg.logger.progress):
            return
        self.progress = Progress(TextColumn("{task.description:>6}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 console=console, transient=False)
        self.progress.start()
        self.epoch_task = self.progress.add_task("epochs", total=epochs, completed=done_epochs, info="")
        self.step_task = self.progress.add_task("steps", total=total_steps, completed=done_steps, info="")

    def advance(self, steps: int = 1, info: str | None = None, epoch_done: bool = False) -> None:
        if self.progress is None:
            return
        self.progress.update(self.step_task, advance=steps, **({"info": info} if info else {}))
        if epoch_done:
            self.progress.update(self.epoch_task, advance=1)

    def set_epoch_info(self, info: str) -> None:
        if self.progress is not None:
            self.progress.update(self.epoch_task, info=info)

    # ---- end of run ----------------------------------------------------------------------------------
    def summary_table(self, summary: dict) -> None:
        if not self.enabled:
            return
        table = Table(title=f"divrun: {summary.get('name')}", show_header=True)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in ("status", "final_val_acc1", "best_val_acc1", "final_holdout_acc1", "final_val_loss",
                    "final_train_loss", "steps", "epochs", "wall_time_s"):
            if summary.get(key) is not None:
                value = summary[key]
                table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        console.print(table)
        # the one value a user copies: its own line, never cut or folded to the terminal's width
        console.print(f"run folder: {summary.get('run_dir')}", soft_wrap=True, highlight=False)

    def close(self, summary: dict | None = None) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self.files.close()
        if self.wandb_run is not None:
            try:
                if summary:
                    self.wandb_run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
                self.wandb_run.finish(exit_code=0 if not summary or summary.get("status") == Status.FINISHED else 1)
            except Exception as error:  # noqa: BLE001 - a wandb failure must never cost the local results
                warnings.warn(f"wandb: finish failed ({error}); local metrics are complete")
            if self.wandb_mode == "offline":
                console.print(f"wandb: offline run saved; upload it with `wandb sync {self.run_dir / 'wandb'}`")

    # ---- wandb ---------------------------------------------------------------------------------------
    def _start_wandb(self, name: str, group: str | None) -> None:
        settings = self.cfg.logger.wandb
        self.wandb_mode = resolve_wandb_mode(settings.mode)
        if self.wandb_mode == "disabled":
            return
        for attempt in (self.wandb_mode, "offline"):
            try:
                self.wandb_run, self.wandb_mode = self._init_wandb(name, group, attempt), attempt
                return
            except Exception as error:  # noqa: BLE001 - wandb trouble (no server, bad key) must not stop training
                reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
                if attempt != "online":
                    warnings.warn(f"wandb: could not start ({reason}); training continues, metrics.jsonl is complete")
                    return
                warnings.warn(f"wandb: cannot reach the server or log in ({reason}); logging offline instead, "
                              f"training continues and metrics.jsonl is complete")

    def _init_wandb(self, name: str, group: str | None, mode: str):
        import wandb

        settings = self.cfg.logger.wandb
        run = wandb.init(
            project=settings.project, entity=settings.entity, name=name, group=settings.group or group,
            tags=list(settings.tags), dir=str(self.run_dir), mode=mode,
            config=OmegaConf.to_container(self.cfg, resolve=True), id=read_meta(self.run_dir).get("wandb_id"),
            resume="allow", settings=wandb.Settings(init_timeout=settings.init_timeout, silent=True))
        write_meta(self.run_dir, wandb_id=run.id)
        return run


def resolve_wandb_mode(mode: str) -> str:
    """auto: an explicit WANDB_MODE wins, then online with credentials, else offline (the modes: runner/validate.py)."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return {"dryrun": "offline", "run": "online"}.get(os.environ["WANDB_MODE"], os.environ["WANDB_MODE"])
    return "online" if has_wandb_credentials() else "offline"


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
