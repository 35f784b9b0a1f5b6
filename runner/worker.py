"""One torchrun worker of a run: `python -m runner.worker <run dir>`.

`divrun` started it through torch.distributed.run after saving the run's resolved config; the worker reads
that config.yaml (Hydra never runs per rank), joins the process group, trains its shard and leaves the
group. Rank 0 writes the folder and the console; the other ranks stay quiet unless they fail.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

from runner import distributed
from runner.errors import ConfigError
from runner.cli import report
from runner.job import run_job
from runner.run_folder import load_config


def main(run_dir: str) -> None:
    cfg = load_config(Path(run_dir))
    with distributed.process_group(cfg.trainer):
        if not distributed.is_main():
            warnings.simplefilter("ignore")
        try:
            run_job(cfg, Path(run_dir), resolved=True, resume=True)  # divrun already checked the intent
        except BaseException as error:  # noqa: BLE001 - report() prints one line and exits with the code
            error = find_config_error(error) or error
            if isinstance(error, ConfigError) and not distributed.is_main():
                sys.exit(2)  # rank 0 says it once
            report(error)


def find_config_error(error: BaseException | None) -> ConfigError | None:
    """The ConfigError behind an error (Hydra's instantiate wraps the ones raised by `_target_`s)."""
    while error is not None and not isinstance(error, ConfigError):
        error = error.__cause__
    return error


if __name__ == "__main__":
    main(sys.argv[1])
