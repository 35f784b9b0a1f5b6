"""`make bench`: run every benchmark module and write benchmarks/RESULTS.md.

Each module's `run(quick)` returns rows (dicts). Speeds are ratios against a baseline measured in the same
run, so the numbers compare across machines. `python -m benchmarks optimizers losses` runs a subset;
`--quick` shrinks the budgets.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import platform
import pkgutil
from pathlib import Path

import torch

import benchmarks

HERE = Path(__file__).parent


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {gpu}"


def markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    names = sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if not m.name.startswith("_"))
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("modules", nargs="*", choices=names + [[]], default=[], help="default: all")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--devices", type=lambda text: text.split(","), default=None,
                        help="comma-separated devices to time on (default: cpu,cuda; cuda where present)")
    parser.add_argument("--json", help="also write every module's rows to this JSON file")
    args = parser.parse_args()
    benchmarks.DEVICES = args.devices
    sections = [f"# Benchmark results\n\nMachine: {machine()}; torch {torch.__version__}; "
                f"{datetime.date.today().isoformat()}; {'quick' if args.quick else 'full'} budgets.\n"]
    results = {"machine": machine(), "torch": torch.__version__, "quick": args.quick, "modules": {}}
    for name in args.modules or names:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"== {name}", flush=True)
        threads = torch.get_num_threads()
        try:
            rows = module.run(args.quick)
        finally:  # a module that times on one thread must not slow down the modules after it
            torch.set_num_threads(threads)
        table = markdown_table(rows) if rows else f"(no rows on {', '.join(args.devices or ['cpu', 'cuda'])}: no CUDA)"
        print(table, flush=True)
        sections.append(f"## {name}\n\n{(module.__doc__ or '').strip()}\n\n{table}\n")
        results["modules"][name] = {"doc": (module.__doc__ or "").strip(), "rows": rows}
    Path(args.out).write_text("\n".join(sections))
    print(f"wrote {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
