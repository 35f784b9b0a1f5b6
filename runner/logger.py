"""Where metrics go: metrics.jsonl (always), rich progress bars and tables on the console, and wandb.

Only the process that owns the run folder logs (rank 0 under DDP); `RunLogger(enabled=False)` is silent.
"""
from __future__ import annotations

import json
import netrc
import os
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

METRICS_FILE, GRAD_NORMS_FILE, META_FILE = "metrics.jsonl", "grad_norms.csv", "meta.json"
console = Console(stderr=True)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_after(path: Path, step: int, step_of) -> None:
    """Drop the records a resumed run will write again (those after its checkpoint's step)."""
    if path.exists():
        lines = path.read_text().splitlines(keepends=True)
        header = lines[:1] if path.suffix == ".csv" else []
        body = [line for line in lines[len(header):] if line.strip() and step_of(line) <= step]
        path.write_text("".join(header + body))


class RunLogger:
    def __init__(self, cfg: DictConfig, run_dir: Path, name: str, group: str | None, enabled: bool = True,
                 resume_step: int | None = None):
        self.run_dir, self.enabled, self.cfg = Path(run_dir), enabled, cfg
        self.progress: Progress | None = None
        self.wandb_run = None
        if not enabled:
            return
        metrics, norms = self.run_dir / METRICS_FILE, self.run_dir / GRAD_NORMS_FILE
        if resume_step is not None:
            truncate_after(metrics, resume_step, lambda line: json.loads(line)["step"])
            truncate_after(norms, resume_step, lambda line: int(line.split(",")[0]) + 1)  # row t is update t: kept when t < step
        self.metrics_file = open(metrics, "a", buffering=1)
        new_norms = not norms.exists()
        self.norms_file = open(norms, "a", buffering=1)
        if new_norms:
            self.norms_file.write("step,l2,l1\n")
        self._start_wandb(name, group)

    # ---- records -------------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.metrics_file.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            try:
                self.wandb_run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
            except Exception as error:  # noqa: BLE001 - a wandb failure must never cost the local results
                warnings.warn(f"wandb: logging failed ({error}); wandb is off for this run, metrics.jsonl is complete")
                self.wandb_run = None

    def log_grad_norms(self, first_step: int, rows: list[list[float]]) -> None:
        if self.enabled:
            self.norms_file.write("".join(f"{first_step + i},{l2:.6g},{l1:.6g}\n" for i, (l2, l1) in enumerate(rows)))

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
        for key in ("status", "final_val_acc1", "best_val_acc1", "final_holdout_acc1", "final_val_loss", "final_train_loss", "steps",
                    "epochs", "wall_time_s", "run_dir"):
            if summary.get(key) is not None:
                value = summary[key]
                table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        console.print(table)

    def close(self, summary: dict | None = None) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self.metrics_file.close()
        self.norms_file.close()
        if self.wandb_run is not None:
            try:
                if summary:
                    self.wandb_run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
                self.wandb_run.finish(exit_code=0 if not summary or summary.get("status") == "finished" else 1)
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
            resume="allow", settings=wandb.Settings(init_timeout=settings.get("init_timeout", 60), silent=True))
        write_meta(self.run_dir, wandb_id=run.id)
        return run


def resolve_wandb_mode(mode: str) -> str:
    """auto: an explicit WANDB_MODE wins, then online with credentials, else offline."""
    if mode != "auto":
        if mode not in ("online", "offline", "disabled"):
            from runner.errors import ConfigError
            raise ConfigError(f"logger.wandb.mode={mode}: choose auto, online, offline or disabled")
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


def read_meta(run_dir: Path) -> dict:
    path = Path(run_dir) / META_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write_meta(run_dir: Path, **values) -> None:
    meta = read_meta(run_dir) | values
    (Path(run_dir) / META_FILE).write_text(json.dumps(meta, indent=2))
