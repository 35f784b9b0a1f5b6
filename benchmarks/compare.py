"""Comparing 1,000 run folders: `runner.results.load` + `load_records` + `runner.comparison.compare`, against
reading the same files' bytes (the floor any loader pays). Target: load and compare under 5 s on the CPU.

The folders are synthetic and shaped like divrun's: the default config resolved (config.yaml), Hydra's
.hydra/{hydra,overrides}.yaml with the choices, summary.json, and metrics.jsonl with 30 epochs of two train
records and one evaluation. 1,000 runs = 5 optimizers x 4 lrs x 5 schedules x 10 seeds (100 groups, each
compared with its baseline). Writing the files (md, csv, json) and the figure are timed apart. On a shared
machine wall seconds grow with the load (its 1-minute average is a column); CPU seconds are this process's."""
from __future__ import annotations

import itertools
import json
import os
import random
import tempfile
import time
from pathlib import Path

import yaml

EPOCHS, STEPS_PER_EPOCH = 30, 11
OPTIMIZERS, LRS, SCHEDULES = ["sgd", "adamw", "lion", "adabelief", "sgdp"], [0.01, 0.03, 0.1, 0.3], \
    ["cosine", "linear", "step", "wsd", "constant"]


def templates() -> tuple[dict, dict]:
    """The default config resolved, and Hydra's config node with its recorded choices, as divrun saves them."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    import runner.config  # noqa: F401 - registers the config resolvers

    with initialize_config_module("runner.conf", version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    config = OmegaConf.to_container(cfg, resolve=False)
    hydra = config.pop("hydra")
    return OmegaConf.to_container(OmegaConf.create(config), resolve=True), {"hydra": hydra}


def write_folders(root: Path, count: int) -> list[Path]:
    config, hydra = templates()
    draw = random.Random(0)
    points = list(itertools.product(OPTIMIZERS, LRS, SCHEDULES, range(10)))[:count]
    folders = []
    for job, (optimizer, lr, schedule, seed) in enumerate(points):
        folder = root / f"{job}-optimizer={optimizer},optimizer.lr={lr},schedule={schedule},seed={seed}"
        (folder / ".hydra").mkdir(parents=True)
        config["optimizer"].update(_target_=f"bench.{optimizer}", lr=lr)
        config["schedule"]["_target_"] = f"bench.{schedule}"
        config["seed"] = seed
        hydra["hydra"]["runtime"]["choices"].update(optimizer=optimizer, schedule=schedule)
        overrides = [f"optimizer={optimizer}", f"optimizer.lr={lr}", f"schedule={schedule}", f"seed={seed}"]
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        skill = {"sgd": 0.95, "adamw": 0.96}.get(optimizer, 0.9) - abs(lr - 0.1)
        records = []
        for epoch in range(1, EPOCHS + 1):
            step = epoch * STEPS_PER_EPOCH
            acc = skill * (1 - 0.5 ** epoch) + draw.gauss(0, 0.005)
            records += [{"step": step - 1, "epoch": (step - 1) / STEPS_PER_EPOCH, "train/loss": 2 * 0.8 ** epoch,
                         "train/acc1": acc, "train/lr": lr, "train/grad_norm": 1.0, "train/img_per_s": 2e4,
                         "train/skipped_steps": 0},
                        {"step": step, "epoch": float(epoch), "train/loss": 2 * 0.8 ** epoch, "train/acc1": acc,
                         "train/lr": lr, "train/grad_norm": 1.0, "train/img_per_s": 2e4, "train/skipped_steps": 0},
                        {"step": step, "epoch": epoch, "val/loss": 1 - acc, "val/nll": 1 - acc, "val/acc1": acc,
                         "val/acc5": min(1.0, acc + 0.05), "val/ece": 0.05}]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (folder / "summary.json").write_text(json.dumps({
            "name": folder.name, "status": "finished", "final_val_acc1": records[-1]["val/acc1"],
            "best_val_acc1": max(r.get("val/acc1", 0) for r in records), "final_train_loss": records[-2]["train/loss"],
            "steps": EPOCHS * STEPS_PER_EPOCH, "epochs": EPOCHS, "wall_time_s": 60.0, "world_size": 1}, indent=2))
        folders.append(folder)
    return folders


def read_bytes(root: Path) -> int:
    return sum(len(p.read_bytes()) for p in root.rglob("*") if p.is_file())


def timed(fn):
    """The value, wall seconds and CPU seconds of this process (the machine may be shared)."""
    start, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, (time.perf_counter() - start, time.process_time() - cpu)


def run(quick: bool) -> list[dict]:
    from runner import comparison, results

    count = 200 if quick else 1000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folders(root, count)
        _, floor = timed(lambda: read_bytes(root))
        runs, load = timed(lambda: results.load(root))
        records, load_records = timed(lambda: results.load_records(runs))
        result, compare = timed(lambda: comparison.compare(runs, records, baseline="optimizer=sgd",
                                                           targets=["val/acc1=0.9"]))
        out = root / "out"
        _, files = timed(lambda: result.write(out))
    assert len(result.groups) == count // 10, result.grouping.keys
    total = tuple(map(sum, zip(load, load_records, compare)))
    rows = [("read the files' bytes (floor)", floor), ("results.load", load), ("results.load_records", load_records),
            ("comparison.compare", compare), ("load + compare", total), ("write md, csv, json, png", files)]
    load_average = os.getloadavg()[0]
    return [{"step": step, "runs": count, "seconds": wall, "cpu_seconds": cpu, "ms_per_run": 1e3 * wall / count,
             "ratio_to_reading": wall / floor[0], "load": load_average,
             "target": (f"< 5 s: {'met' if wall < 5 else 'missed'} (CPU time {'met' if cpu < 5 else 'missed'})"
                        if step == "load + compare" else "")} for step, (wall, cpu) in rows]
