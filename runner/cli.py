"""The `divrun` command: Hydra composes the config; `resume=<run folder>` continues a run without Hydra."""
from __future__ import annotations

import os
import secrets
import sys
from importlib import resources
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from runner.errors import ConfigError

_UID = f"{os.getpid() % 100000:05d}{secrets.token_hex(2)}"
OmegaConf.register_new_resolver("divrun_uid", lambda: _UID, replace=True)


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
    """`${divrun_optimizer:NAME,OVERRIDES}`: a wrapper's base optimizer (SAM's `base`) as a nested config,
    resolved when the run starts so config.yaml records every value the run used."""
    config = group_option("optimizer", name)
    if "base" in config:
        raise ConfigError(f"optimizer.base={name} is itself a wrapper; pick a plain optimizer (sgd, adamw, lion, ...)")
    return OmegaConf.merge(config, overrides or {})


OmegaConf.register_new_resolver("divrun_optimizer", optimizer_config, replace=True)


@hydra.main(version_base="1.3", config_path="pkg://runner.conf", config_name="config")
def hydra_job(cfg: DictConfig):
    from runner.job import run_job

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    name = hydra_cfg.job.override_dirname or "default"
    group = Path(hydra_cfg.sweep.dir).name if multirun else None
    try:
        return run_job(cfg, Path(hydra_cfg.runtime.output_dir), name=name, group=group)
    except (ConfigError, InterpolationResolutionError, KeyboardInterrupt) as error:
        fail(error, multirun)
    except Exception as error:  # noqa: BLE001 - a sweep goes on past a failing job; summary.json has the trace
        if not multirun:
            raise
        print(f"divrun: job {name} failed: {type(error).__name__}: {error} (see its summary.json)", file=sys.stderr)
    return None


def fail(error: BaseException, multirun: bool) -> None:
    message = (str(error) or type(error).__name__).splitlines()[0]  # OmegaConf appends full_key lines
    print(f"divrun: error: {message}", file=sys.stderr)
    if not multirun:
        sys.exit(130 if isinstance(error, KeyboardInterrupt) else 2)


def resume(run_dir: str, overrides: list[str]) -> None:
    from runner.job import load_config, run_job

    cfg = load_config(Path(run_dir))
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    run_job(cfg, Path(run_dir), resolved=not overrides)


def main() -> None:
    args = sys.argv[1:]
    resume_args = [a for a in args if a.startswith("resume=")]
    if resume_args and resume_args[-1] != "resume=null":
        try:
            resume(resume_args[-1].split("=", 1)[1], [a for a in args if not a.startswith("resume=")])
        except ConfigError as error:
            fail(error, multirun=False)
        return
    hydra_job()


if __name__ == "__main__":
    main()
