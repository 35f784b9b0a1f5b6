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
from runner.job import load_config, run_job


def main(run_dir: str) -> None:
    cfg = load_config(Path(run_dir))
    with distributed.process_group(cfg.trainer):
        if not distributed.is_main():
            warnings.simplefilter("ignore")
        try:
            run_job(cfg, Path(run_dir), resolved=True)
        except KeyboardInterrupt:
            sys.exit(130)
        except Exception as error:
            config_error = find_config_error(error)
            if config_error is None:
                raise
            if distributed.is_main():
                print(f"divrun: error: {config_error}", file=sys.stderr)
            sys.exit(2)  # divrun adds nothing to a status-2 failure: this line says it all


def find_config_error(error: BaseException | None) -> ConfigError | None:
    """The ConfigError behind an error (Hydra's instantiate wraps the ones raised by `_target_`s)."""
    while error is not None and not isinstance(error, ConfigError):
        error = error.__cause__
    return error


if __name__ == "__main__":
    main(sys.argv[1])
