"""`make reproduce-table`: recipes expand into valid configs, runs skip when done, failures are recorded and the
table renders with its verdicts. The end-to-end test trains a digits table (seconds) in subprocesses."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import compose
from runner.errors import ConfigError
from runner.tables import launch, cli, overrides as ov, recipe as recipes, results
from runner import stats
from runner.stats import Summary
from runner.tables.recipe import Metric, PaperValue

RECIPES = recipes.available()


# ---- every recipe -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", RECIPES)
def test_recipe_expands_into_configs_that_compose(name, tmp_path):
    recipe = recipes.load(name)
    assert recipe.cells and all(m.definition for m in recipe.metrics.values())
    assert any(cell.paper for cell in recipe.cells.values()) or recipe.citation.startswith("divrun's own")
    missing = {}
    for scale in recipes.SCALES:
        runs = recipe.runs(tmp_path / "tables", scale, data_root=tmp_path / "datasets")
        assert len({run.run_dir for run in runs}) == len(runs)
        assert {run.cell.name for run in runs} == set(recipe.cells)
        stage_of = {run.cell.name: run.stage for run in runs}
        for run in runs:
            assert run.run_dir.is_relative_to(tmp_path / "tables" / name) and run.run_dir.name == f"seed{run.seed}"
            assert not any("${data:" in o or "${cell:" in o for o in run.overrides), run.overrides
            for need in run.cell.needs:  # a dependency resolves to its run folder at the same seed, and runs first
                assert any(str(run.table_dir / need / f"seed{run.seed}") in o for o in run.overrides)
                assert stage_of[need] < run.stage
            if run.seed:
                continue
            lacking = ov.missing_features(run.overrides)
            if lacking:
                missing[run.cell.name] = lacking
                continue
            cfg = compose(*run.overrides)  # raises on an option or key that does not fit the chosen options
            assert cfg.seed == 0
            keys = [ov.split(override)[0] for override in run.overrides]
            for i, override in enumerate(run.overrides):  # every value reached the config (none silently dropped)
                key, value = ov.split(override)
                refined = any(later.startswith(key + ".") for later in keys[i + 1:])  # a dict, one key set later
                if not ov.is_group(key) and value and "[" not in value and "'" not in value and not refined:
                    parsed = OverridesParser.create().parse_override(override).value()  # Hydra's value grammar
                    assert str(_select(cfg, key)) in (value, str(yaml.safe_load(value)), str(parsed)), override
    if missing:
        lacking = sorted({item for items in missing.values() for item in items})
        pytest.skip(f"{name}: {len(missing)} of {len(recipe.cells)} cells need what this checkout lacks: "
                    + ", ".join(lacking))


def _select(cfg, key: str):
    from omegaconf import OmegaConf
    return OmegaConf.select(cfg, key)


# ---- the parts ----------------------------------------------------------------------------------------------

def test_merge_later_values_win_and_a_new_group_choice_drops_the_old_options_keys():
    merged = ov.merge(["schedule=multistep", "schedule.milestones=[80,120]", "optimizer.lr=0.1"],
                      ["optimizer=adamw", "optimizer.lr=0.01"], ["schedule=cosine"])
    assert merged == ["optimizer=adamw", "optimizer.lr=0.01", "schedule=cosine"]
    # the same choice again keeps its keys; keys set before any explicit choice stay
    assert ov.merge(["schedule=multistep", "schedule.gamma=0.5"], ["schedule=multistep"]) == \
        ["schedule.gamma=0.5", "schedule=multistep"]


def test_placeholders_fill_with_absolute_folders_quoted_when_needed(tmp_path):
    assert ov.fill("dataset.root=${data:}", tmp_path, None) == f"dataset.root={tmp_path.resolve()}"
    assert ov.fill("dataset.root=${data:imagenet}", tmp_path, None) == f"dataset.root={tmp_path.resolve() / 'imagenet'}"
    odd = tmp_path / "a=b,c"
    assert ov.fill("distill.teacher=${cell:r/t}", tmp_path, lambda c: odd / c) == f"distill.teacher='{odd.resolve() / 'r/t'}'"
    assert ov.cell_references("distill.teacher=${cell:r56/teacher}") == ["r56/teacher"]


def test_missing_options_and_keys_are_named():
    assert ov.missing_features(["optimizer=sgd", "optimizer.lr=0.1"]) == []
    assert ov.missing_features(["optimizer=nope"]) == ["conf/optimizer/nope.yaml"]
    assert ov.missing_features(["distill=kd_not_here"]) == ["conf/distill/kd_not_here.yaml"]
    assert ov.missing_features(["optimizer=sgd", "optimizer.no_such_key=1"]) == ["key optimizer.no_such_key"]


T2 = 4.302652729911275  # Student's t quantile 0.975 at 2 degrees of freedom: the 95% interval of 3 seeds


@pytest.mark.parametrize("paper, ours, expected", [
    # our interval 91.85 +- T2 * 0.05 / sqrt(3) = [91.73, 91.97] misses 92.0; widened by the paper's 0.2 it holds it
    (PaperValue(92.0, 0.2, "paper"), Summary.from_moments(91.85, 0.05, 3), "reproduced"),
    (PaperValue(92.0, None, "paper"), Summary.from_moments(91.85, 0.05, 3), "gap -0.15 (95% CI -0.27 to -0.03)"),
    (PaperValue(92.0, 0.1, "paper"), Summary.from_moments(91.5, 0.3, 3), "reproduced"),  # [90.75, 92.25] holds 92
    # [90.50, 91.50] + 0.1 misses 92.0: the gap with its interval, ours - paper
    (PaperValue(92.0, 0.1, "paper"), Summary.from_moments(91.0, 0.2, 3), "gap -1.00 (95% CI -1.50 to -0.50)"),
    (PaperValue(92.0, None, "paper"), Summary.from_moments(92.5, None, 1),
     "gap +0.50 (one seed has no interval: run more seeds)"),
    (None, Summary.from_moments(92.5, None, 1), ""),
])
def test_verdict(paper, ours, expected):
    assert results.verdict(paper, ours, smoke=False) == expected
    assert results.verdict(paper, ours, smoke=True) == "smoke run: not compared"


def test_per_cell_estimates_are_the_shared_statistics():
    """mean, sample std and the t interval of a cell's seeds, by hand."""
    ours = stats.describe([91.8, 91.9, 91.85])
    assert (ours.n, ours.mean, ours.std) == (3, pytest.approx(91.85), pytest.approx(0.05))
    assert (ours.ci_low, ours.ci_high) == pytest.approx((91.85 - T2 * 0.05 / 3 ** 0.5, 91.85 + T2 * 0.05 / 3 ** 0.5))


def test_best_grid_point_follows_the_metric_direction():
    variants = {"lr=0.1": {"m": [90.0, 92.0]}, "lr=0.3": {"m": [93.0]}, "lr=1": {"m": []}}
    assert results.best_variant(variants, Metric("m", "m", "d", "k")) == "lr=0.3"
    assert results.best_variant(variants, Metric("m", "m", "d", "k", higher_is_better=False)) == "lr=0.1"


def test_a_grid_cell_reports_the_point_best_on_the_holdout_split_not_on_test(tmp_path):
    raw = minimal(columns={"a": {"grid": {"optimizer.lr": [0.01, 0.1]}}, "b": {}})
    recipe = recipes.load(write_recipe(tmp_path, raw))
    runs = recipe.runs(tmp_path / "tables")
    assert all("dataset.holdout=0.1" in run.overrides for run in runs if run.cell.grid)
    assert not any("dataset.holdout=0.1" in run.overrides for run in runs if not run.cell.grid)
    scores = {"lr=0.01": (0.95, 0.80), "lr=0.1": (0.90, 0.85), None: (0.5, 0.5)}  # (test, holdout)
    for run in runs:
        run.run_dir.mkdir(parents=True)
        test, held = scores[run.variant]
        (run.run_dir / "summary.json").write_text(json.dumps(
            {"status": "finished", "final_val_acc1": test, "final_holdout_acc1": held}))
    lines = {line.cell.name: line for line in results.collect(recipe, runs, launch.inspect(runs), smoke=False)}
    assert lines["r/a"].variant == "lr=0.1" and lines["r/a"].ours.mean == 0.90  # holdout's pick, its test value
    from runner.tables import render

    render.render(recipe, list(lines.values()), tmp_path / "out", False, recipe.protocol)
    text = (tmp_path / "out" / "table.md").read_text()
    assert "the point in [brackets] has the best top-1 on the holdout split (`final_holdout_acc1`" in text
    assert "holdout final_holdout_acc1" in (tmp_path / "out" / "table.csv").read_text()
    raw["metrics"] = {"train": {"label": "train loss", "key": "final_train_loss", "definition": "d",
                                "higher_is_better": False}}
    recipe = recipes.load(write_recipe(tmp_path, raw))  # the training objective selects itself, without a holdout
    assert recipe.selection.key == "final_train_loss"
    assert not any("dataset.holdout" in " ".join(run.overrides) for run in recipe.runs(tmp_path / "tables"))
    raw["metrics"] = {"speed": {"label": "img/s", "key": "images_per_s", "definition": "d"}}
    with pytest.raises(ConfigError, match="has no holdout counterpart to select grid points on"):
        recipes.load(write_recipe(tmp_path, raw))


def write_recipe(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def minimal(**extra) -> dict:
    return {"title": "t", "citation": "c", "seeds": 1, "smoke": {}, "protocol": ["dataset=digits"],
            "rows": {"r": {}}, "columns": {"a": {}, "b": {}},
            "metrics": {"acc1": {"label": "top-1", "key": "final_val_acc1", "definition": "d"}}, **extra}


@pytest.mark.parametrize("extra, message", [
    ({"paper": {"r/zz": {"acc1": 1.0}}}, "not a cell"),
    ({"paper": {"r/a": {"acc5": 1.0}}}, "not one of the metrics"),
    ({"cells": {"r/a": {"overrides": ["notes=${cell:r/b}"]}, "r/b": {"overrides": ["notes=${cell:r/a}"]}}}, "loop"),
    ({"cells": {"r/a": {"overrides": ["notes=${cell:r/nope}"]}}}, "not a cell of the table"),
    ({"rows": {"Bad-Name": {}}}, "lower-case"),
])
def test_bad_recipes_are_one_clear_error(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        recipes.load(write_recipe(tmp_path, minimal(**extra)))


# ---- end to end ---------------------------------------------------------------------------------------------

def test_digits_table_end_to_end(tmp_path, capsys):
    """digits_demo with AdamW swept over two lrs, plus a failing cell, a cell blocked by it, a cell this checkout
    cannot build and a cell that needs another's run folder: runs, records, skips on re-run, renders."""
    raw = yaml.safe_load((recipes.recipes_dir() / "digits_demo.yaml").read_text())
    raw["columns"]["adamw"]["grid"] = {"optimizer.lr": [1.0e-4, 3.0e-3]}
    raw["columns"] |= {
        "broken": {"label": "broken", "overrides": ["optimizer=sgd", "optimizer.lr=-1.0"]},
        "after_broken": {"label": "after broken", "overrides": ["notes=${cell:small_cnn/broken}"]},
        "missing": {"label": "missing", "overrides": ["optimizer=not_an_optimizer"]},
        "after_sgd": {"label": "after sgd", "overrides": ["notes=${cell:small_cnn/sgd}"]},
    }
    path = tmp_path / "digits_e2e.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "tables"
    args = [str(path), "--out", str(out), "--seeds", "1", "--jobs", "2", "--set", "trainer.epochs=1"]
    cli.main(args)
    table = out / "digits_e2e"
    status = {c: launch.read_status(table / "small_cnn" / c / "seed0")[0]
              for c in ("sgd", "adamw/lr=0.0001", "adamw/lr=0.003", "after_sgd", "broken")}
    assert set(status.values()) == {"finished", "failed"} and status["broken"] == "failed"
    assert not (table / "small_cnn" / "after_broken").exists() and not (table / "small_cnn" / "missing").exists()
    notes = yaml.safe_load((table / "small_cnn" / "after_sgd" / "seed0" / "config.yaml").read_text())["notes"]
    assert notes == str(table / "small_cnn" / "sgd" / "seed0")

    markdown = (table / "table.md").read_text()
    for text in ("| small CNN / SGD | top-1 (%) | 99.58 +- 0.20 (check) |", "| small CNN / AdamW [lr=0.003] |",
                 "not measured", "2 finished", "1 failed: ", "optimizer.lr",
                 "1 blocked: needs small_cnn/broken seed0, which is failed",
                 "1 unavailable: missing conf/optimizer/not_an_optimizer.yaml"):
        assert text in markdown, text
    rows = (table / "table.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 * 3 and (table / "table.png").stat().st_size > 0

    finished = table / "small_cnn" / "sgd" / "seed0" / "summary.json"
    stamp = finished.stat().st_mtime_ns
    capsys.readouterr()
    cli.main(args)  # the finished cells are skipped, the failed one tried again
    log = capsys.readouterr().err
    assert finished.stat().st_mtime_ns == stamp
    assert "small_cnn/sgd seed0: finished (done before)" in log and "small_cnn/broken seed0: failed" in log

    cli.main(args[:1] + ["--out", str(out), "--scale", "smoke", "--render"])
    smoke = (table / "smoke" / "table.md").read_text()
    assert "SMOKE RUN" in smoke and "| verdict |" not in smoke and "99.58" not in smoke


# ---- the kuangliu CIFAR models the AdaBelief, diffGrad and PS-KD tables train -------------------------------

@pytest.mark.parametrize("option, millions", [("vgg11", 9.23), ("densenet121", 6.96), ("preact_resnet18", 11.17)])
def test_kuangliu_models_have_the_reference_sizes(option, millions):
    """Parameter counts of kuangliu/pytorch-cifar's models on CIFAR-10 (VGG-11 there adds 2,752 conv biases
    that batch norm makes redundant), and a forward pass to 10 logits through features() and head."""
    import torch
    from hydra.utils import instantiate

    model = instantiate(compose(f"model={option}").model)(in_channels=3, num_classes=10).eval()
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.01)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (1, 10) and torch.allclose(logits, model.head(model.features(x)))


# ---- an lr x batch grid's fitted exponent ------------------------------------------------------------------

def test_scaling_fit_recovers_the_exponent_of_the_best_lrs_and_flags_grid_edges(tmp_path):
    """Hand-made run folders where the training loss is lowest at lr = 0.1 (B / 64) for SGD and at
    1e-3 sqrt(B / 64) for Adam: the fitted exponents are 1 and 1/2."""
    from runner.tables import scaling

    recipe = recipes.load("batch_scaling_cifar10")
    runs = recipe.runs(tmp_path / "tables")
    best = {"sgd": lambda b: 0.1 * b / 64, "adam": lambda b: 1e-3 * (b / 64) ** 0.5}
    outcomes = {}
    for run in runs:
        batch = int(dict(ov.split(o) for o in run.overrides)["trainer.batch_size"])
        lr = float(dict(ov.split(o) for o in run.overrides)["optimizer.lr"])
        loss = abs(__import__("math").log2(lr / best[run.cell.row](batch)))  # 0 at the best lr, grows away from it
        run.run_dir.mkdir(parents=True)
        (run.run_dir / "config.yaml").write_text(yaml.safe_dump({"trainer": {"batch_size": batch}, "optimizer": {"lr": lr}}))
        (run.run_dir / "summary.json").write_text(json.dumps({"status": "finished", "final_train_loss": loss,
                                                              "final_val_acc1": 0.9}))
        outcomes[run.run_dir] = launch.Outcome(run, "finished")
    lines = results.collect(recipe, runs, outcomes, smoke=False)
    fits = {row.row: row for row in scaling.fit(recipe, runs, outcomes, lines)}
    assert fits["sgd"].exponent == pytest.approx(1.0, abs=1e-9) and fits["sgd"].expected == 1.0
    assert fits["adam"].exponent == pytest.approx(0.5, abs=0.06)  # sqrt(2) steps fall between grid points
    assert [edge for _, _, edge in sorted(fits["sgd"].points)] == [False, False, False, False, True]  # 1.6 at B=1024
    text = scaling.markdown(list(fits.values()), recipe.scaling)
    assert "| SGD | 1.00" in text and "1024: 1.6*" in text
