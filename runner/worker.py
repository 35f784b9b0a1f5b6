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
        except (ConfigError, KeyboardInterrupt) as error:
            if distributed.is_main():
                print(f"divrun: error: {error or type(error).__name__}", file=sys.stderr)
            sys.exit(2 if isinstance(error, ConfigError) else 130)


if __name__ == "__main__":
    main(sys.argv[1])
