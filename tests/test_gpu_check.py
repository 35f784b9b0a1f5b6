"""`make gpu-check`'s fast part on a CPU, without network or downloaded wheels: the stage plumbing (outcomes
from exit statuses, per-stage timeouts, the budget), the report (JSON and RESULTS.md fragment), and the
rehearsal of its first stages (divrun built and installed with --no-deps into a target folder, imports
checked, the CUDA tests collected and skipped)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def environment(tmp_path: Path, **settings: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "GPU_CHECK_STAGES", "GPU_CHECK_BUDGET")}
    return {**env, "PYTHON": sys.executable, "GPU_CHECK_WORK": str(tmp_path / "work"),
            "GPU_CHECK_RESULTS": str(tmp_path / "results"), "GPU_DIR": str(tmp_path / "no-wheels"), **settings}


def test_stages_record_their_outcome_their_timeout_and_the_budget(tmp_path):
    stages = """
        stage ok 30 true
        stage skip 30 bash -c 'echo "skipped: nothing to do here"; exit 77'
        stage hang 100 sleep 30
        stage broken 30 bash -c 'echo "the last line says why"; sleep 3; exit 3'
        stage late 30 true
        stage unselected 30 true
        (cd "$WORK" && "$PYTHON" -m benchmarks._gpu_check report --work "$WORK" --results "$RESULTS" --budget "$BUDGET")
    """
    settings = {"GPU_CHECK_STAGES": "ok,skip,hang,broken,late", "GPU_CHECK_BUDGET": "9", "GPU_CHECK_TIMEOUT_hang": "2"}
    result = subprocess.run(["bash", "-c", f"source {SCRIPT}; setup; {stages}"], capture_output=True, text=True,
                            env=environment(tmp_path, **settings), timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "results" / "gpu_check.json").read_text())
    outcomes = {s["stage"]: (s["status"], s["note"]) for s in report["stages"]}
    assert list(outcomes) == ["ok", "skip", "hang", "broken", "late"]
    assert outcomes["ok"][0] == "passed"
    assert outcomes["skip"] == ("skipped", "skipped: nothing to do here")
    assert outcomes["hang"][0] == "timeout" and outcomes["hang"][1].startswith("no result within 2 s")
    assert outcomes["broken"] == ("failed", "the last line says why")
    assert outcomes["late"] == ("skipped", "the 9 s budget is spent")
    hang = next(s for s in report["stages"] if s["stage"] == "hang")
    assert 2 <= hang["seconds"] <= 4, hang
    assert report["misses"] == ["stage hang timeout: " + outcomes["hang"][1],
                                "stage broken failed: the last line says why"]
    fragment = (tmp_path / "results" / "gpu_check.md").read_text()
    assert "| broken | failed |" in fragment and "**Misses its target:**" in fragment
    assert "==== broken: failed" in (tmp_path / "results" / "gpu_check.log").read_text()


def test_dry_run_installs_divrun_into_a_target_and_skips_the_cuda_tests(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, cwd=tmp_path,
                            env=environment(tmp_path, GPU_CHECK_STAGES="env,install,tests"), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "results" / "gpu_check.json").read_text())
    outcomes = {s["stage"]: (s["status"], s["note"]) for s in report["stages"]}
    assert outcomes["env"][0] == outcomes["install"][0] == "passed", outcomes
    assert outcomes["tests"] == ("skipped", "skipped: no CUDA (the tests were collected; each skips on the CPU)")
    assert report["dry_run"] and report["env"]["gpu"] is None
    target = tmp_path / "work" / "site"
    assert (target / "runner" / "conf" / "config.yaml").is_file() and (target / "bin" / "divrun").is_file()
    log = (tmp_path / "results" / "gpu_check.log").read_text()
    assert f"divrun                   0.1.0        target: {target / 'runner'}" in log
    assert report["pytest"]["tests"]["skipped"] > 10 and report["pytest"]["tests"]["failed"] == 0
