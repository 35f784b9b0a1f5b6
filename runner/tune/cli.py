"""`divrun-tune`: compare methods after an equal-budget search on held-out training data.

    divrun-tune optimizer=adamw,lion,sgd --trials 20 --seeds 3 -- dataset=cifar10 model=resnet20 trainer.epochs=30
    divrun-tune ... --out outputs/tune/lion-vs-adamw      where it writes (default outputs/tune/<date>/<time>-<uid>)
    divrun-tune --resume outputs/tune/lion-vs-adamw       after a kill: finished trials are kept, not rerun
    divrun-tune --worker --storage postgresql+psycopg://host/db   one more worker on a shared study

Before `--`: the methods (one choice per config group; `optimizer=adamw,lion loss=ce,js` makes four) and the
tune's options; after it: overrides shared by every run. Each method's space is its options' `search_space`
(runner/search_space.py), edited with --space. Every trial is a divrun run folder under <out>/<method>/.
"""
from __future__ import annotations

import argparse
import fcntl
import secrets
import sys
import threading
import time
from datetime import datetime
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from runner.errors import ConfigError
from runner.search_space import parse_edit
from runner.tune import report, spec as specs, study as studies

console = Console(stderr=True)
DEFAULT_TRIALS = 20


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="divrun-tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("methods", nargs="*", help="group=option,option,... (e.g. optimizer=adamw,lion,sgd)")
    parser.add_argument("--trials", type=int, default=None, help="trials per method, the same for every one (default 20)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of each best and default re-run (default 3)")
    parser.add_argument("--out", default=None, help="the tune folder (default outputs/tune/<date>/<time>-<uid>)")
    parser.add_argument("--resume", default=None, metavar="DIR", help="continue the tune in DIR")
    parser.add_argument("--worker", action="store_true", help="only run trials of an existing tune (with --storage)")
    parser.add_argument("--storage", default=None, help="an Optuna storage URL (default: sqlite in the tune folder)")
    parser.add_argument("--tune", default=None, help="with --worker: the tune id, when the storage holds several")
    parser.add_argument("--sampler", default="qmc", choices=("qmc", "tpe"),
                        help="qmc: quasi-random (scrambled Halton, AlgoPerf's protocol; default); tpe: Optuna's TPE")
    parser.add_argument("--sampler-seed", type=int, default=0, help="the sampler's seed (default 0)")
    parser.add_argument("--prune", action="store_true", help="stop trials below the median at evaluation points")
    parser.add_argument("--metric", default="holdout/acc1", help="the eval metric selected on (default holdout/acc1)")
    parser.add_argument("--space", action="append", default=[], metavar="[METHOD:]KEY=SPEC",
                        help="narrow, replace, add (or =null: freeze) a range, e.g. --space 'optimizer.lr={low: 1e-4}'")
    parser.add_argument("--jobs", type=int, default=None, help="trials at once (default: one per GPU, 1 on a CPU)")
    parser.add_argument("--devices", default=None, help="comma-separated GPU ids, one trial per id at a time")
    parser.add_argument("--dry-run", action="store_true", help="print the methods and their spaces; run nothing")
    return parser.parse_args(argv[:split]), argv[split + 1:]


def conf_groups() -> list[str]:
    root = resources.files("runner.conf")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "hydra")))


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_module

    import runner.cli  # noqa: F401 - the divrun resolvers

    with initialize_config_module("runner.conf", version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def new_spec(args: argparse.Namespace, base: list[str]) -> specs.Spec:
    """The tune the command describes, every method composed and checked; nothing is written."""
    from runner.cli import check_command

    if not args.methods:
        raise ConfigError("name the methods to compare, e.g. divrun-tune optimizer=adamw,lion,sgd --trials 20 -- "
                          "trainer.epochs=30")
    args.trials = DEFAULT_TRIALS if args.trials is None else args.trials
    if args.trials < 1:
        raise ConfigError(f"--trials {args.trials}: each method needs at least one trial; pass e.g. --trials 20")
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: the re-runs need at least one seed; pass e.g. --seeds 3")
    if not args.metric.startswith("holdout/"):
        raise ConfigError(f"--metric {args.metric}: tuning selects on the holdout split; pass e.g. --metric holdout/acc1")
    notes = []
    if not any(o.partition("=")[0].lstrip("+") == "dataset.holdout" for o in base):
        base = [*base, f"dataset.holdout={specs.DEFAULT_HOLDOUT}"]
        notes.append(f"the command sets no holdout: {specs.DEFAULT_HOLDOUT:.0%} of the training set is held out "
                     f"for selection (dataset.holdout={specs.DEFAULT_HOLDOUT}; pass dataset.holdout=N after -- to change it)")
    edits = [parse_edit(text) for text in args.space]
    methods = []
    for name, choices in specs.methods_of(args.methods, conf_groups()):
        check_command([*base, *choices])
        cfg = compose([*base, *choices])
        if not cfg.dataset.get("holdout"):
            raise ConfigError(f"dataset.holdout={cfg.dataset.get('holdout') or 'null'}: divrun-tune selects on the holdout split; "
                              f"pass dataset.holdout=N (a count or a fraction) or leave it out for 10%")
        methods.append(specs.build_method(name, choices, cfg, edits))
    unknown = sorted({only for only, _, _ in edits if only} - {m.name for m in methods})
    if unknown:
        raise ConfigError(f"--space {unknown[0]}:...: no method is named {unknown[0]}; methods: "
                          f"{', '.join(m.name for m in methods)}")
    out = Path(args.out or default_out()).resolve()
    if (out / specs.FILE).exists():
        raise ConfigError(f"--out {out} holds a tune already; continue it with divrun-tune --resume {out}")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is not empty; choose a new folder")
    tune_id = f"{out.name}-{secrets.token_hex(3)}"
    storage = args.storage or studies.default_storage(out)
    return specs.Spec(tune_id, str(out), methods, base, args.trials, args.seeds, args.sampler, args.sampler_seed,
                      args.prune, args.metric, specs.safe_storage(storage), notes=notes)


def default_out() -> str:
    now = datetime.now()
    return f"outputs/tune/{now:%Y-%m-%d}/{now:%H-%M-%S}-{secrets.token_hex(3)}"


def storage_url(spec: specs.Spec, given: str | None) -> str:
    url = given or spec.storage
    if "***" in url:
        raise ConfigError(f"the tune's storage {url} needs its password, which is not stored; pass --storage URL")
    return url


def lock(folder: Path):
    """One driver per tune folder: a second one (or --resume while the first lives) is refused."""
    handle = open(folder / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"{folder} is being tuned by another divrun-tune; wait for it to end or stop it first") from None
    return handle


def slots_of(args: argparse.Namespace) -> list[dict[str, str]]:
    from runner.launch import parallel_slots, visible_gpus

    devices = args.devices.split(",") if args.devices else None
    if devices is None and args.jobs is None:
        devices = visible_gpus() or None  # one trial per GPU on a CUDA machine
    return parallel_slots(args.jobs or 1, devices)


def run_trials(spec: specs.Spec, storage, slots: list[dict[str, str]]) -> dict[str, str]:
    """This process's workers run trials until no study needs one; returns the methods that broke."""
    scheduler = studies.Scheduler(spec, storage)
    with Progress(TextColumn("{task.description:>12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=console, transient=False) as bars:
        done = studies.progress(spec, storage)
        tasks = {m.name: bars.add_task(m.name, total=spec.trials, completed=done[m.name][0], info="")
                 for m in spec.methods}

        def worker(slot: dict[str, str]) -> None:
            while True:
                claimed = scheduler.claim()
                if claimed is None:
                    return
                started = time.time()
                try:
                    outcome, score = studies.execute(claimed, slot)
                except studies.Broken as error:
                    scheduler.broken[claimed.method.name] = str(error)
                    bars.console.print(f"divrun-tune: error: {error}", highlight=False)
                    continue
                folder = claimed.trial.user_attrs.get("run_dir")
                shown = "" if score is None else f" {spec.metric} {score:.4f}"
                bars.console.print(f"divrun-tune: {folder}: {outcome}{shown} ({time.time() - started:.0f} s)",
                                   highlight=False)
                finished = studies.progress(spec, storage)[claimed.method.name][0]
                bars.update(tasks[claimed.method.name], completed=finished, info=best_info(spec, claimed.study))

        threads = [threading.Thread(target=worker, args=(slot,), daemon=True) for slot in slots]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
    return scheduler.broken


def best_info(spec: specs.Spec, study) -> str:
    scores = [t.value for t in studies.finished(study) if t.value is not None]
    if not scores:
        return ""
    return f"best {spec.metric} {(max if spec.higher_is_better else min)(scores):.4f}"


def wait_for_others(spec: specs.Spec, storage, slots) -> dict[str, str]:
    """Until every study has its trials finished: trials other workers run, and ones they leave behind."""
    while True:
        state = studies.progress(spec, storage)
        if all(finished >= spec.trials for finished, _ in state.values()):
            return {}
        broken = run_trials(spec, storage, slots)  # picks up trials whose worker died (heartbeat)
        if broken:
            return broken
        running = sum(r for _, r in studies.progress(spec, storage).values())
        if running:
            console.print(f"divrun-tune: waiting for {running} trials of other workers", highlight=False)
        time.sleep(5)


def drive(spec: specs.Spec, url: str, slots, fresh: bool) -> None:
    """Search, re-run the winners and defaults, render; the whole tune in this process (plus any workers)."""
    folder = Path(spec.dir)
    folder.mkdir(parents=True, exist_ok=True)
    held = lock(folder)
    storage = studies.open_storage(url)
    if fresh:
        spec.save()
        for method in spec.methods:
            studies.open_study(spec, method, storage, create=True)
    else:
        spec.save()
        for folder_name in studies.recover(spec, storage):
            console.print(f"divrun-tune: {folder_name} was interrupted; it runs again from its checkpoint",
                          highlight=False)
    for note in spec.notes:
        console.print(f"divrun-tune: {note}", highlight=False)
    console.print(f"divrun-tune: {len(spec.methods)} methods x {spec.trials} trials in {spec.dir} "
                  f"(storage {specs.safe_storage(url)})", highlight=False)
    broken = run_trials(spec, storage, slots) or wait_for_others(spec, storage, slots)
    if broken:
        raise ConfigError(next(iter(broken.values())))
    console.print(f"divrun-tune: search done; re-running each method's best and default with seeds 1..{spec.seeds}",
                  highlight=False)
    report.rerun_all(spec, storage, slots, console)
    path = report.render(spec, storage, console)
    console.print(f"divrun-tune: wrote {path} (and comparison.{{csv,json,png}}), expected_max.{{csv,png}}, "
                  f"tuned_vs_default.csv, best_params.json in {spec.dir}", highlight=False)
    held.close()


def work(args: argparse.Namespace) -> None:
    """`--worker`: run trials of a tune found in --storage until none is left."""
    import optuna

    if not args.storage:
        raise ConfigError("--worker needs --storage URL (the database the tune's studies live in)")
    storage = studies.open_storage(args.storage)
    found = {}
    for name in optuna.get_all_study_names(storage):
        raw = optuna.load_study(study_name=name, storage=storage).user_attrs.get("divrun_tune")
        if raw and (args.tune is None or raw["tune_id"] == args.tune):
            found[raw["tune_id"]] = raw
    if len(found) != 1:
        which = ", ".join(sorted(found)) or "none"
        raise ConfigError(f"--worker: the storage holds {len(found)} divrun tunes ({which}); pass --tune ID" if found
                          else f"--worker: no divrun tune in {specs.safe_storage(args.storage)}"
                               + (f" named {args.tune}" if args.tune else "") + "; start one with divrun-tune first")
    spec = specs.Spec.from_dict(next(iter(found.values())))
    if args.out:
        spec.dir = str(Path(args.out).resolve())
    studies.recover(spec, storage)
    run_trials(spec, storage, slots_of(args))


def dry_run(spec: specs.Spec) -> None:
    from rich.table import Table

    table = Table(title=f"divrun-tune --dry-run: {len(spec.methods)} methods x {spec.trials} trials, {spec.seeds} seeds")
    for column in ("method", "choices", "space"):
        table.add_column(column, overflow="fold")
    for method in spec.methods:
        space = method.parsed_space().describe()
        table.add_row(method.name, " ".join(method.choices), "\n".join(f"{k}: {v}" for k, v in space.items()))
    Console().print(table)
    print("shared overrides: " + " ".join(spec.base))


def main(argv: list[str] | None = None) -> None:
    args, base = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.worker:
            work(args)
        elif args.resume:
            if args.methods or base:
                raise ConfigError("--resume continues a tune as it was started; pass no methods or overrides "
                                  "(only --trials to extend it, --jobs, --devices, --storage)")
            spec = specs.load(Path(args.resume))
            if args.trials is not None:
                if args.trials < spec.trials:
                    raise ConfigError(f"--trials {args.trials}: the tune has {spec.trials} per method already; "
                                      f"pass a larger number to extend it")
                spec.trials = args.trials
            drive(spec, storage_url(spec, args.storage), slots_of(args), fresh=False)
        else:
            spec = new_spec(args, base)
            if args.dry_run:
                dry_run(spec)
                return
            drive(spec, storage_url(spec, args.storage), slots_of(args), fresh=True)
    except ConfigError as error:
        print(f"divrun-tune: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("divrun-tune: interrupted; continue with divrun-tune --resume <the tune folder>", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
