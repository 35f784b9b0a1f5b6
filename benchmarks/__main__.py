"""`python -m benchmarks [--quick] [module ...]`: run every benchmarks/<topic>.py (its `run(quick) -> list[dict]`)
and write benchmarks/RESULTS.md: machine, torch version, date, one table per module."""
from __future__ import annotations

import argparse
import datetime
import importlib
import platform
import pkgutil
from pathlib import Path

import torch

HERE = Path(__file__).parent


def table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("modules", nargs="*", help="benchmark modules to run (default: all)")
    args = parser.parse_args()
    names = args.modules or sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if not m.name.startswith("_"))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    sections = [f"# Benchmarks\n\n{platform.node()}, {device}, torch {torch.__version__}, "
                f"{datetime.date.today().isoformat()}{' (quick)' if args.quick else ''}\n"]
    for name in names:
        rows = importlib.import_module(f"benchmarks.{name}").run(args.quick)
        sections.append(f"## {name}\n\n{table(rows)}\n")
        print(sections[-1])
    (HERE / "RESULTS.md").write_text("\n".join(sections))


if __name__ == "__main__":
    main()
