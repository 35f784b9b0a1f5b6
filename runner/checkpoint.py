"""Checkpoints: everything a run needs to continue, written atomically, read without running pickle code.

A run folder keeps its newest `keep` checkpoints as `checkpoints/step_<step>.pt`; `checkpoints/last.pt` is a
hard link to the newest one (the file other tools open). Each file is written to a temporary name, fsynced
and renamed, so a kill leaves the previous file or the new one, never half of one. Loading takes the newest
file that reads back whole; newer ones that do not (truncated by a full disk, damaged by a copy, crafted) are
reported, renamed to `*.corrupt` and skipped.

Every load uses `torch.load(weights_only=True)`: tensors and plain containers only, no code from a file runs.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from runner.errors import ConfigError
from runner.run_folder import CHECKPOINTS, LAST_CHECKPOINT

STEP_FILE = re.compile(r"step_(\d+)\.pt")


class UnreadableCheckpoint(ConfigError):
    """A checkpoint file that cannot be (or must not be) loaded."""


def save_atomic(payload: dict, path: Path) -> None:
    """Write to a temporary file, fsync, then rename: a kill leaves the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make renames inside `folder` durable (a crash right after a rename could otherwise undo it)."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def load(path: Path, mmap: bool = False) -> dict:
    """torch.load with weights_only=True: tensors and plain containers only, no code from the file runs.
    `mmap`: map the file instead of reading it (tensors are read when touched)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:  # weights_only met a global it will not import: code, refused
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UnreadableCheckpoint(f"checkpoint {path} refused: it asks to run code when loaded ({first_line}); "
                                   f"divrun only loads tensors and plain data") from error
    except Exception as error:  # noqa: BLE001 - truncated, damaged or not a torch file: the same to the user
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UnreadableCheckpoint(f"checkpoint {path} is unreadable ({type(error).__name__}: {first_line})") \
            from error
    if not isinstance(payload, dict):
        raise UnreadableCheckpoint(f"checkpoint {path} holds a {type(payload).__name__}, not a checkpoint dict")
    return payload


def rng_state() -> dict:
    """Python, numpy, torch CPU and CUDA generators. The data order needs no state of its own: it is drawn
    from a generator seeded by (seed, epoch), so the checkpoint's epoch and step replay it exactly."""
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


def step_of(path: Path) -> int:
    match = STEP_FILE.fullmatch(path.name)
    return int(match.group(1)) if match else -1


class Checkpointer:
    """The checkpoints of one run folder: save every so often keeping the newest `keep`, load the newest
    readable one."""

    def __init__(self, run_dir: Path, keep: int = 2, enabled: bool = True):
        self.folder = Path(run_dir) / CHECKPOINTS
        self.keep, self.enabled = max(1, int(keep)), enabled

    @property
    def last(self) -> Path:
        return self.folder / LAST_CHECKPOINT

    def paths(self) -> list[Path]:
        """Checkpoint files, newest first."""
        return sorted(self.folder.glob("step_*.pt"), key=step_of, reverse=True)

    def exists(self) -> bool:
        return bool(self.paths())

    def save(self, payload: dict) -> Path | None:
        """Write step_<step>.pt (adding every RNG state), point last.pt at it, drop all but the newest `keep`."""
        if not self.enabled:
            return None
        path = self.folder / f"step_{payload['step']:09d}.pt"
        save_atomic(payload | {"rng": rng_state()}, path)
        self._point_last_at(path)
        for old in self.paths()[self.keep:]:
            old.unlink(missing_ok=True)
        return path

    def _point_last_at(self, path: Path) -> None:
        tmp = self.last.with_name(LAST_CHECKPOINT + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)  # a second name for the same file: atomic to swap in, no extra space
        except OSError:  # file systems without hard links: a copy
            shutil.copyfile(path, tmp)
        os.replace(tmp, self.last)
        fsync_folder(self.folder)

    def load(self) -> dict | None:
        """The newest checkpoint that reads back whole; None when the folder has none.

        Unreadable newer files are set aside (renamed *.corrupt) with a warning once a good one is found;
        when none is readable nothing is renamed and the error names every file tried."""
        tried = []
        for path in self.paths():
            try:
                payload = load(path)
                if "step" not in payload or "rng" not in payload:
                    raise UnreadableCheckpoint(f"checkpoint {path} holds no training state (no step or RNG state)")
            except UnreadableCheckpoint as error:
                tried.append((path, error))
                continue
            for bad, error in tried:
                warnings.warn(f"{error}; using the previous checkpoint {path.name} (step {payload['step']}) and "
                              f"keeping the bad file as {bad.name}.corrupt", stacklevel=2)
                bad.rename(bad.with_name(bad.name + ".corrupt"))
            if tried:
                self._point_last_at(path)
            return payload
        if tried:
            raise UnreadableCheckpoint(f"no readable checkpoint in {self.folder} ({tried[0][1]}); delete "
                                       f"{self.folder} to start the run over")
        return None


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether a run folder holds a checkpoint (for config checks such as a teacher run's folder)."""
    return Checkpointer(Path(run_dir)).exists()
