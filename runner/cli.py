"""The `divrun` command: Hydra composes the config; `resume=<run folder>` continues a run without Hydra.

Before Hydra creates any folder, every job the command would run (each point of a sweep) is composed and
validated, so bad input costs one line per problem and leaves nothing on disk.

Exit codes (each status carries its own: runner.run_folder.Status): 0 finished, 1 a bug (traceback), 2 bad
input (ConfigError), 3 diverged (trainer.on_nonfinite=stop), 75 preempted by SIGTERM/SIGUSR1 after saving a
checkpoint (requeue it), 130 interrupted (Ctrl-C).
In a sweep a failed, diverged or invalid job is recorded in its summary.json and the sweep goes on; a
preemption or Ctrl-C stops the sweep.
"""
from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from runner import config, run_folder
from runner.errors import ConfigError, WorkersFailed
from runner.run_folder import Status

MULTIRUN_FLAGS = ("-m", "--multirun")
SWEEP_STOPPERS = (Status.PREEMPTED, Status.INTERRUPTED)  # a sweep goes on past failed and diverged jobs
# a worker that exits with one of these printed its one-line reason already
EXPLAINED_EXIT_CODES = {ConfigError.exit_code, *(s.exit_code for s in (Status.DIVERGED, *SWEEP_STOPPERS))}


@hydra.main(version_base="1.3", config_path="pkg://runner.conf", config_name="config")
def hydra_job(cfg: DictConfig):
    from runner import sweep
    from runner.job import run_job

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    name = hydra_cfg.job.override_dirname or "default"
    group = Path(hydra_cfg.sweep.dir).name if multirun else None
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        before, summary = sweep.previous_run(run_dir, cfg) if multirun else ("new", {})
        if before == "done":  # a resumed sweep: this job's run is over
            print(f"divrun: job {name}: {summary.get('status')} before; skipped", file=sys.stderr)
            return summary
        return run_job(cfg, run_dir, name=name, group=group, resume=True if before == "started" else None)
    except BaseException as error:  # noqa: BLE001 - report() decides: exit, re-raise, or go on with the sweep
        if multirun and run_folder.read_summary(run_dir) is None:  # refused before it started: record why
            run_folder.write_summary(run_dir, {"name": name, "group": group, "status": Status.FAILED,
                                               "run_dir": str(run_dir), "error": f"{type(error).__name__}: {error}"})
        report(error, multirun, name)
    return None


def report(error: BaseException, multirun: bool = False, name: str | None = None) -> None:
    """Print why a job stopped, one line per problem, and exit with its code, except in a sweep, which goes
    on past a failed, diverged or invalid job (its summary.json has the details)."""
    if isinstance(error, SystemExit):
        raise error
    if isinstance(error, WorkersFailed) and error.exitcode in EXPLAINED_EXIT_CODES:
        if not multirun or error.exitcode in (s.exit_code for s in SWEEP_STOPPERS):
            sys.exit(error.exitcode)  # the worker printed its one-line reason already
        return
    status, code = run_folder.outcome(error)
    bug = code == Status.FAILED.exit_code  # anything else (bad input, divergence, ...) is explained in a line
    if bug and not multirun:
        raise error  # the traceback is the useful output
    job = f"job {name}: " if multirun else ""
    if bug:
        lines = [f"{job}failed: {type(error).__name__}: {error} (see its summary.json)"]
    else:
        prefix = "error: " if isinstance(error, ConfigError) else ""
        lines = [f"{job}{prefix}{line}" for line in (str(error) or type(error).__name__).splitlines()]
    print("\n".join(f"divrun: {line}" for line in lines), file=sys.stderr)
    if not bug and (not multirun or status in SWEEP_STOPPERS):
        sys.exit(code)


def resume(run_dir: str, overrides: list[str]) -> None:
    from runner.job import run_job

    cfg = run_folder.load_config(Path(run_dir))
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    run_job(cfg, Path(run_dir), resolved=not overrides, resume=True)


def with_calibration_holdout(args: list[str]) -> list[str]:
    """`eval.calibrate` fits its temperature on the holdout split: a command that names no `dataset.holdout`
    holds DEFAULT_HOLDOUT of the training set out (said on stderr; an explicit dataset.holdout=null is refused
    by the pre-flight), so `divrun eval.calibrate=temperature` runs as typed, as divrun-tune does."""
    from runner.calibration import CALIBRATION_OBJECTIVES
    from runner.tune.spec import DEFAULT_HOLDOUT

    values = {key.lstrip("+~"): value for key, _, value in (a.partition("=") for a in args if not a.startswith("-"))}
    calibrated = set(values.get("eval.calibrate", "").split(",")) & set(CALIBRATION_OBJECTIVES)  # a sweep's too
    if not calibrated or "dataset.holdout" in values:
        return args
    print(f"divrun: eval.calibrate fits the temperature on the holdout split: {DEFAULT_HOLDOUT:.0%} of the "
          f"training set is held out (dataset.holdout={DEFAULT_HOLDOUT}; pass dataset.holdout=N to change it)",
          file=sys.stderr)
    return [*args, f"dataset.holdout={DEFAULT_HOLDOUT}"]


# ---- validation of the whole command before Hydra runs ----------------------------------------------
def jobs_of(args: list[str]) -> list[list[str]] | None:
    """The overrides of every job the command runs; None when other Hydra flags (--cfg, --help, -cn, ...)
    or another sweeper decide what happens (Hydra handles those, and each job is still validated)."""
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    if any(flag not in MULTIRUN_FLAGS for flag in flags):
        return None
    if not flags:
        return [overrides]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    if any(o.key_or_group.startswith(("hydra/sweeper", "hydra.sweeper")) for o in parsed):
        return None
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def check_command(args: list[str]) -> None:
    """Compose and validate each job of the command; raise one ConfigError listing every problem."""
    from hydra.errors import HydraException

    try:
        jobs = jobs_of(args)
    except HydraException as error:
        raise ConfigError(f"cannot parse the overrides: {_first_line(error)}") from error
    if jobs is None:
        return
    from runner.validate import problems_of

    found: dict[str, list[str]] = {}
    single_run = not any(a in MULTIRUN_FLAGS for a in args)
    with config.composer() as compose:
        for overrides in jobs:
            try:
                cfg = compose(overrides)
                problems = list(problems_of(cfg)) or (run_dir_problems(cfg, overrides) if single_run else [])
            except HydraException as error:
                problems = [composition_problem(error, overrides, compose)]
            for problem in problems:
                found.setdefault(problem, []).append(" ".join(overrides) or "defaults")
    if found:
        raise ConfigError("\n".join(problem + jobs_note(where, len(jobs)) for problem, where in found.items()))


def jobs_note(jobs_with_problem: list[str], jobs: int) -> str:
    """Which jobs of a sweep a problem is in (nothing when it is in all of them)."""
    if len(jobs_with_problem) == jobs:
        return ""
    more = f" and {len(jobs_with_problem) - 1} more" if len(jobs_with_problem) > 1 else ""
    return f" [in job {jobs_with_problem[0]}{more}]"


def composition_problem(error: Exception, overrides: list[str], compose) -> str:
    """Hydra's multi-line composition errors as one line naming the key and the fix."""
    from hydra.errors import MissingConfigException

    if isinstance(error, MissingConfigException) and error.options is not None:
        group, _, option = str(error.missing_cfg_file).rpartition("/")
        return f"{group}={option}: no such option; choose one of {', '.join(sorted(error.options))}"
    match = re.search(r"Could not override '([^']+)'", str(error))
    if match:
        return unknown_key_problem(match.group(1), overrides, compose)
    return f"{_first_line(error)}"


def unknown_key_problem(key: str, overrides: list[str], compose) -> str:
    """`key=...` overrides a key the config lacks: name its first missing part, the keys beside it and the
    closest of them (composed without the overrides of `key` and of keys under it)."""
    from hydra.errors import HydraException

    key_of = lambda override: override.split("=", 1)[0].lstrip("+~")  # noqa: E731
    others = [o for o in overrides if key_of(o) != key and not key_of(o).startswith(key + ".")]
    try:
        parent = compose(others)
    except HydraException as error:  # another override fails too: report that one
        return composition_problem(error, others, compose)
    parts, depth = key.split("."), 0
    while depth < len(parts) - 1 and isinstance(parent.get(parts[depth]), DictConfig):
        parent, depth = parent[parts[depth]], depth + 1
    missing, parent_key, leaf = ".".join(parts[:depth + 1]), ".".join(parts[:depth]), parts[depth]
    if leaf in parent:
        return f"{key}: {missing} holds a value, not keys; set {missing}=<value>"
    valid = sorted(str(k) for k in parent)
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f"did you mean {parent_key + '.' if parent_key else ''}{close[0]}? " if close else ""
    return (f"{missing}: no such key in {parent_key or 'the config'}; {hint}valid keys: {', '.join(valid)} "
            f"(+{missing}=... adds a new key)")


def run_dir_problems(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """A fixed hydra.run.dir that holds a run is continued (trainer.resume=auto), never written over: refused
    here, before Hydra writes its own files into it."""
    from hydra import compose
    from hydra.core.utils import setup_globals

    from runner.job import overwrite_problems

    setup_globals()  # Hydra's ${now:...}, which the default run dir holds
    hydra_cfg = compose("config", overrides=overrides, return_hydra_config=True)
    run_dir = OmegaConf.select(hydra_cfg, "hydra.run.dir", throw_on_resolution_failure=False)
    return overwrite_problems(Path(run_dir), cfg.trainer.resume == "auto") if run_dir else []


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def main() -> None:
    from runner import sweep
    from runner.launch import die_with_parent

    die_with_parent()  # a job of divrun-table or divrun-tune stops with it
    args = sys.argv[1:]
    resume_args = [a for a in args if a.startswith("resume=")]
    try:
        if resume_args and resume_args[-1] != "resume=null":
            folder, others = resume_args[-1].split("=", 1)[1], [a for a in args if not a.startswith("resume=")]
            if not sweep.is_sweep_folder(folder):
                resume(folder, others)
                return
            args = sys.argv[1:] = sweep.command_of(folder) + others  # a sweep folder: its command, resumed
        args = sys.argv[1:] = with_calibration_holdout(args)
        check_command(args)
    except BaseException as error:  # noqa: BLE001 - report() exits with the right code or re-raises
        report(error)
    try:
        hydra_job()
    except SystemExit as stop:  # a launcher that raised on a failed job ends the sweep before its comparison
        sweep.after_abort(stop.code)
        raise


if __name__ == "__main__":
    main()
