"""Sweeps end in a comparison and survive their own death.

The comparison: `CompareAtEnd` is a Hydra callback (conf/config.yaml, `hydra.callbacks.compare`). Hydra calls
its `on_multirun_end` in the launching process once every job has returned, whatever the launcher (basic,
gpus, slurm); it prints the comparison of the sweep folder's runs and writes comparison.{md,csv,json,png}
there, failed jobs listed with their status. A launcher that aborts the sweep on a job's failure (a job
process killed by the system) skips that callback: `after_abort` writes the comparison of what is there.
Its options (`hydra.callbacks.compare.by`, `.pool`, `.metric`, `.baseline`, `.target`, `.sensitivity`, `.enabled`) are
`divrun-compare`'s flags.

Resume: the same `divrun -m ...` command with `hydra.sweep.dir=<the sweep folder>` (or `divrun resume=<the
sweep folder>`, which reads the command back from the folder's multirun.yaml) gives every job its old folder,
since Hydra numbers the jobs and names their folders from the command, and each job (`previous_run`):
- is skipped when its summary.json says finished or diverged (a result another try would repeat),
- continues from its newest checkpoint when its run had started (killed, preempted, failed),
- starts when the folder holds no run;
a folder holding a run of another config (outside runner.results.EXECUTION_KEYS) is refused in one line and
left as it is.
"""
from __future__ import annotations

import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner import run_folder
from runner.errors import ConfigError
from runner.run_folder import Status

DONE = (Status.FINISHED, Status.DIVERGED)
SWEEP_FILE = "multirun.yaml"
_running: dict = {}  # the sweep this process launched and its callback, until its comparison is written


def split(text: str | None) -> list[str] | None:
    """"optimizer,loss" -> ["optimizer", "loss"]: how divrun-compare's flags and these options list keys."""
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


class CompareAtEnd(Callback):
    def __init__(self, enabled: bool = True, by=None, pool=None, metric=None, baseline=None, target=None,
                 sensitivity=False):
        self.enabled = enabled
        listed = lambda value: None if value is None else split(value) if isinstance(value, str) else list(value)
        self.options = {"by": listed(by), "pool": listed(pool) or (), "metrics": listed(metric),
                        "baseline": baseline, "targets": [target] if isinstance(target, str) else list(target or ()),
                        "sensitivity": sensitivity}

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        folder = Path(str(config.hydra.sweep.dir)).resolve()
        _running.update(folder=folder, callback=self)
        print(f"divrun: sweep folder {folder}; if the sweep stops, finish it with the same command and "
              f"hydra.sweep.dir={folder} (or divrun resume={folder})", file=sys.stderr)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self.compare(Path(str(config.hydra.sweep.dir)).resolve())

    def compare(self, folder: Path) -> None:
        _running.clear()
        if self.enabled:
            write_comparison(folder, **self.options)


def write_comparison(folder: Path, **options) -> None:
    """Print the comparison of the runs under `folder` and write its files there; never raises (the jobs are
    done: a problem costs one line naming divrun-compare)."""
    from runner import comparison, results, terminal

    console = terminal.console()
    try:
        result = comparison.compare(results.load(folder), **options)
        result.print(console)
        paths = result.write(folder)
    except ConfigError as error:
        print(f"divrun: comparison: error: {error}", file=sys.stderr)
        return
    except Exception as error:  # noqa: BLE001 - the runs are done and on disk; the comparison can be redone
        print(f"divrun: could not compare the sweep ({type(error).__name__}: {error}); "
              f"run divrun-compare {folder}", file=sys.stderr)
        return
    console.print(f"divrun: wrote {', '.join(p.name for p in paths)} in {folder}", highlight=False, soft_wrap=True)


def after_abort(exit_code) -> None:
    """A sweep that ended without Hydra's on_multirun_end (a launcher raised on a failed job) is compared
    anyway, unless it was preempted or interrupted (it will be resumed)."""
    from runner.cli import SWEEP_STOPPERS

    if _running and exit_code not in [status.exit_code for status in SWEEP_STOPPERS]:
        _running["callback"].compare(_running["folder"])


# ---- resuming a sweep -------------------------------------------------------------------------------------
def previous_run(run_dir: Path, cfg: DictConfig) -> tuple[str, dict]:
    """("done", summary) for a finished run of this config, ("started", {}) for one to continue from its
    checkpoints, ("new", {}) for an empty job folder; ConfigError for a run of another config."""
    from runner import results

    summary, status = results.summary_and_status(run_dir)
    saved = results.read_yaml(run_dir / run_folder.CONFIG)
    if saved is None:
        return "new", {}
    differs = config_difference(saved, cfg)
    if differs:
        raise ConfigError(f"{run_dir} holds a run of another config ({differs}); re-run the sweep's own command "
                          f"or pass a new hydra.sweep.dir")
    return ("done", summary) if status in DONE else ("started", {})


def config_difference(saved: dict, cfg: DictConfig) -> str:
    """The first key (outside the execution keys) whose value differs: "optimizer.lr: 0.1 there, 0.2 now"."""
    from runner import results

    now = results.flatten(OmegaConf.to_container(run_folder.resolved_config(cfg)))
    there = results.flatten(saved)
    for key in sorted(set(now) & set(there)):
        if not results.is_execution_key(key) and now[key] != there[key]:
            return f"{key}: {there[key]!r} there, {now[key]!r} now"
    return ""


def is_sweep_folder(path: str) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


def command_of(folder: str) -> list[str]:
    """The `divrun` arguments that re-run the sweep in `folder` (read from its multirun.yaml)."""
    from runner.tables.overrides import quote

    import yaml

    recorded = yaml.safe_load((Path(folder) / SWEEP_FILE).read_text())["hydra"]["overrides"]
    hydra = [o for o in recorded.get("hydra") or [] if not o.startswith(("hydra.mode=", "hydra.sweep.dir="))]
    return ["-m", *(recorded.get("task") or []), *hydra, f"hydra.sweep.dir={quote(str(Path(folder).resolve()))}"]
