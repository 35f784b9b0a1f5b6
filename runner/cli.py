"""The `divrun` command: Hydra composes the config; `resume=<run folder>` continues a run without Hydra.

Before Hydra creates any folder, every job the command would run (each point of a sweep) is composed and
validated, so bad input costs one line per problem and leaves nothing on disk.

Exit codes: 0 finished, 1 a bug (traceback), 2 bad input (ConfigError), 3 diverged (trainer.on_nonfinite=stop),
75 preempted by SIGTERM/SIGUSR1 after saving a checkpoint (requeue it), 130 interrupted (Ctrl-C).
In a sweep a failed, diverged or invalid job is recorded in its summary.json and the sweep goes on; a
preemption or Ctrl-C stops the sweep.
"""
from __future__ import annotations

import difflib
import os
import re
import secrets
import sys
from importlib import resources
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from runner.errors import ConfigError, WorkersFailed

_UID = f"{os.getpid() % 100000:05d}{secrets.token_hex(2)}"
# cached: Hydra copies a sweep's resolver cache into each job's config, so jobs run in other processes
# (the gpus launcher, SLURM, a requeued SLURM job) land in the folder the sweep named
OmegaConf.register_new_resolver("divrun_uid", lambda: _UID, replace=True, use_cache=True)

DIVERGED_EXIT_CODE, INTERRUPTED_EXIT_CODE = 3, 130
EXPLAINED_EXIT_CODES = (2, DIVERGED_EXIT_CODE, 75, INTERRUPTED_EXIT_CODE)  # a worker's report() printed why
MULTIRUN_FLAGS = ("-m", "--multirun")


def group_option(group: str, name: str) -> DictConfig:
    """conf/<group>/<name>.yaml with its defaults list (same-group options and _self_) merged as Hydra does."""
    folder = resources.files("runner.conf") / group
    path = folder / f"{name}.yaml"
    if not path.is_file():
        options = sorted(f.name.removesuffix(".yaml") for f in folder.iterdir() if f.name.endswith(".yaml"))
        raise ConfigError(f"{group}={name} does not exist; choose one of {', '.join(options)}")
    node = OmegaConf.create(path.read_text())
    defaults = list(node.pop("defaults", []))
    merged = OmegaConf.create()
    for entry in defaults if "_self_" in defaults else [*defaults, "_self_"]:
        merged = OmegaConf.merge(merged, node if entry == "_self_" else group_option(group, entry))
    return merged


def optimizer_config(name: str, overrides: DictConfig | None = None) -> DictConfig:
    """`${divrun_optimizer:NAME,OVERRIDES}`: a wrapper's base optimizer (`optimizer.base` of sam, asam,
    lookahead) as a nested config with `optimizer.base_overrides` merged in, resolved when the run starts so
    config.yaml records every value the run used."""
    config = group_option("optimizer", name)
    if "base" in config:
        raise ConfigError(f"optimizer.base={name} is itself a wrapper; pick a plain optimizer (sgd, adamw, lion, ...)")
    unknown = sorted(set(overrides or {}) - set(config))
    if unknown:
        raise ConfigError(f"optimizer.base_overrides: optimizer={name} has no key {', '.join(unknown)}; "
                          f"its keys: {', '.join(k for k in config if not k.startswith('_'))}")
    return OmegaConf.merge(config, overrides or {})


def resolve_update_rule(optimizer: DictConfig) -> str:
    """`${divrun_update_rule:${optimizer}}`: the optimizer whose update rule the run applies (a wrapper's base)."""
    from runner.optim import update_rule as rule  # torch only when a config asks

    return rule(optimizer)


OmegaConf.register_new_resolver("divrun_optimizer", optimizer_config, replace=True)
OmegaConf.register_new_resolver("divrun_update_rule", resolve_update_rule, replace=True)


@hydra.main(version_base="1.3", config_path="pkg://runner.conf", config_name="config")
def hydra_job(cfg: DictConfig):
    from runner.job import SUMMARY_FILE, run_job, write_summary

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    name = hydra_cfg.job.override_dirname or "default"
    group = Path(hydra_cfg.sweep.dir).name if multirun else None
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        return run_job(cfg, run_dir, name=name, group=group)
    except BaseException as error:  # noqa: BLE001 - report() decides: exit, re-raise, or go on with the sweep
        if multirun and not (run_dir / SUMMARY_FILE).exists():  # refused before it started: record why
            write_summary(run_dir, {"name": name, "group": group, "status": "failed", "run_dir": str(run_dir),
                                    "error": f"{type(error).__name__}: {error}"})
        report(error, multirun, name)
    return None


def report(error: BaseException, multirun: bool = False, name: str | None = None) -> None:
    """Print why a job stopped, one line per problem, and exit with its code, except in a sweep, which goes
    on past a failed, diverged or invalid job (its summary.json has the details)."""
    from runner.nonfinite import Diverged
    from runner.preemption import REQUEUE_EXIT_CODE, Preempted

    if isinstance(error, SystemExit):
        raise error
    if isinstance(error, InterpolationResolutionError):  # a resolver's ConfigError (SAM's base), wrapped by OmegaConf
        error = ConfigError((str(error) or type(error).__name__).splitlines()[0])
    codes = {ConfigError: 2, Diverged: DIVERGED_EXIT_CODE, Preempted: REQUEUE_EXIT_CODE,
             KeyboardInterrupt: INTERRUPTED_EXIT_CODE}
    code = next((c for kind, c in codes.items() if isinstance(error, kind)), None)
    if isinstance(error, WorkersFailed) and error.exitcode in EXPLAINED_EXIT_CODES:
        if not multirun or error.exitcode in (REQUEUE_EXIT_CODE, INTERRUPTED_EXIT_CODE):
            sys.exit(error.exitcode)  # the worker printed its one-line reason already
        return
    if code is None and not multirun:
        raise error  # a bug: the traceback is the useful output
    job = f"job {name}: " if multirun else ""
    if code is None:
        lines = [f"{job}failed: {type(error).__name__}: {error} (see its summary.json)"]
    else:
        prefix = "error: " if isinstance(error, ConfigError) else ""
        lines = [f"{job}{prefix}{line}" for line in (str(error) or type(error).__name__).splitlines()]
    print("\n".join(f"divrun: {line}" for line in lines), file=sys.stderr)
    if code is not None and (not multirun or code in (REQUEUE_EXIT_CODE, INTERRUPTED_EXIT_CODE)):
        sys.exit(code)


def resume(run_dir: str, overrides: list[str]) -> None:
    from runner.job import load_config, run_job

    cfg = load_config(Path(run_dir))
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    run_job(cfg, Path(run_dir), resolved=not overrides, resume=True)


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
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    try:
        jobs = jobs_of(args)
    except HydraException as error:
        raise ConfigError(f"cannot parse the overrides: {_first_line(error)}") from error
    if jobs is None:
        return
    from runner.validate import problems_of

    found: dict[str, list[str]] = {}
    with initialize_config_module("runner.conf", version_base="1.3"):
        for overrides in jobs:
            try:
                problems = list(problems_of(compose("config", overrides=overrides)))
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
        key = match.group(1)
        parent_key, _, leaf = key.rpartition(".")
        others = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
        parent = OmegaConf.select(compose("config", overrides=others), parent_key) if parent_key else \
            compose("config", overrides=others)
        valid = sorted(str(k) for k in parent) if isinstance(parent, DictConfig) else []
        close = difflib.get_close_matches(leaf, valid, n=1)
        where = parent_key or "the config"
        hint = f"did you mean {parent_key + '.' if parent_key else ''}{close[0]}? " if close else ""
        return f"{key}: no such key in {where}; {hint}valid keys: {', '.join(valid)} (+{key}=... adds a new key)"
    return f"{_first_line(error)}"


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def main() -> None:
    from runner.launch import die_with_parent

    die_with_parent()  # a job of divrun-table or divrun-tune stops with it
    args = sys.argv[1:]
    resume_args = [a for a in args if a.startswith("resume=")]
    try:
        if resume_args and resume_args[-1] != "resume=null":
            resume(resume_args[-1].split("=", 1)[1], [a for a in args if not a.startswith("resume=")])
            return
        check_command(args)
    except BaseException as error:  # noqa: BLE001 - report() exits with the right code or re-raises
        report(error)
    hydra_job()


if __name__ == "__main__":
    main()
