"""Checkpoints: everything a run needs to continue, written atomically, read without running pickle code."""
from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from runner.errors import ConfigError

LAST = "last.pt"


def save_atomic(payload: dict, path: Path) -> None:
    """Write to a temporary file, fsync, then rename: a kill leaves the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load(path: Path) -> dict:
    """torch.load with weights_only=True: tensors and plain containers only, no code from the file runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure here means the same thing to the user
        raise ConfigError(f"checkpoint {path} is unreadable ({type(error).__name__}: {str(error).splitlines()[0]}); "
                          f"delete it to start over or point to another run folder") from error


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


class Checkpointer:
    """checkpoints/last.pt in a run folder."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.folder = Path(run_dir) / "checkpoints"
        self.enabled = enabled

    @property
    def last(self) -> Path:
        return self.folder / LAST

    def exists(self) -> bool:
        return self.last.exists()

    def save(self, payload: dict) -> None:
        if self.enabled:
            save_atomic(payload | {"rng": rng_state()}, self.last)

    def load(self) -> dict | None:
        if not self.exists():
            return None
        payload = load(self.last)
        if "rng" not in payload or "step" not in payload:
            warnings.warn(f"{self.last} holds no training state; starting from scratch")
            return None
        return payload
