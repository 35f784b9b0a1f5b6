"""`divrun-compare`: the comparison of any run folders, as at the end of a sweep.

    divrun-compare outputs/multirun/2026-12-01/10-00-00-abc          a sweep folder (its comparison again)
    divrun-compare 'outputs/**' --by optimizer,loss --metric final_val_acc1 --baseline optimizer=sgd
    divrun-compare RUN_A RUN_B ... --target val/acc1=0.9                steps / epochs / seconds to a target
    divrun-compare SWEEP --by optimizer,optimizer.lr --sensitivity      the lr sensitivity per optimizer

Prints the tables and writes comparison.{md,csv,json,png} into --out: by default the folder given when it
is one folder holding runs (a sweep), else outputs/comparisons/<date>/<time>.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

from runner import terminal
from runner.errors import ConfigError
from runner.sweep import split


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="divrun-compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="run folders, sweep folders or globs (quote them: 'outputs/**')")
    parser.add_argument("--by", help="grouping keys, comma-separated (default: what differs across the runs except "
                                     "the seed), e.g. optimizer,loss or trainer.batch_size")
    parser.add_argument("--pool", help="keys allowed to differ inside a group, comma-separated")
    parser.add_argument("--metric", help="the measures to test against the baseline, comma-separated; the first "
                                         "orders the tables and the figure (default final_val_acc1)")
    parser.add_argument("--baseline", help="KEY=VALUE[,KEY=VALUE]: the group the others are compared with "
                                           "(default: the first group)")
    parser.add_argument("--target", action="append", default=[], metavar="METRIC=VALUE",
                        help="time to a target, e.g. val/acc1=0.9 (repeatable)")
    parser.add_argument("--sensitivity", action="store_true",
                        help="the lr sensitivity of each lr sweep (Wortsman et al. 2023): the mean rise of the final "
                             "val loss over the best lr's; group by the lr, e.g. --by optimizer.lr")
    parser.add_argument("--out", help="where comparison.{md,csv,json,png} go")
    parser.add_argument("--no-files", action="store_true", help="print the tables only")
    return parser.parse_args(argv)


def output_folder(paths: list[str]) -> Path:
    if len(paths) == 1 and os.path.isdir(paths[0]) and not any(
            os.path.exists(os.path.join(paths[0], marker)) for marker in ("summary.json", "config.yaml")):
        return Path(paths[0])
    return Path("outputs", "comparisons", f"{datetime.datetime.now():%Y-%m-%d}", f"{datetime.datetime.now():%H-%M-%S}")


def run(args: argparse.Namespace) -> None:
    from runner import comparison, results

    runs = results.load(args.paths)
    result = comparison.compare(runs, by=split(args.by), pool=split(args.pool) or (), metrics=split(args.metric),
                                baseline=args.baseline, targets=args.target, sensitivity=args.sensitivity)
    console = terminal.console()
    result.print(console)
    if not args.no_files:
        folder = Path(args.out) if args.out else output_folder(args.paths)
        paths = result.write(folder)
        console.print(f"divrun-compare: wrote {', '.join(p.name for p in paths)} in {folder.resolve()}",
                      highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ConfigError as error:
        print(f"divrun-compare: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
