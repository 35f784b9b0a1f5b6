"""`python -m benchmarks [--quick] [names...]`: runs every benchmarks/<topic>.py (its `run(quick)` returns
rows of dicts) and writes benchmarks/RESULTS.md with the machine, torch version, date and a table per module."""
from __future__ import annotations

import argparse
import datetime
import importlib
import platform
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("names", nargs="*", help="modules to run (default: all)")
    args = parser.parse_args()
    names = args.names or sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or platform.machine()
    out = [f"# Benchmark results\n\nmachine: {platform.node()} ({device}, {torch.get_num_threads()} threads), "
           f"torch {torch.__version__}, {datetime.datetime.now():%Y-%m-%d %H:%M}\n"]
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        rows = module.run(args.quick)
        section = f"## {name}\n\n{(module.__doc__ or '').strip()}\n\n{table(rows)}\n"
        print(section)
        out.append(section)
    (HERE / "RESULTS.md").write_text("\n".join(out))


if __name__ == "__main__":
    main()
