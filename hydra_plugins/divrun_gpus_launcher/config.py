"""The `gpus` launcher's config, stored in Hydra's ConfigStore as `hydra/launcher=gpus` (Hydra imports every
module under `hydra_plugins` when it scans for plugins, so any Hydra app with this package installed can
select it, as with Hydra's own joblib and submitit launchers)."""
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class GpusLauncherConf:
    _target_: str = "hydra_plugins.divrun_gpus_launcher.gpus_launcher.GpusLauncher"
    # auto: every visible GPU (CUDA_VISIBLE_DEVICES, else all); or a list of GPU ids, e.g. [0,2,3]
    gpus: Any = "auto"
    # GPUs per job: its slot's GPUs are all the job sees (trainer.devices=auto trains on all of them)
    gpus_per_job: int = 1
    # without CUDA: jobs at once, sharing the cores; auto: one per core
    cpu_jobs: Any = "auto"


ConfigStore.instance().store(group="hydra/launcher", name="gpus", node=GpusLauncherConf,
                             provider="divrun_gpus_launcher")
