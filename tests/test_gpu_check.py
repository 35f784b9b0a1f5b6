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


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="3">
<testcase classname="tests.test_cuda" name="test_fused_kernels_on_cuda" time="1.0"/>
<testcase classname="tests.test_cuda" name="test_no_host_sync_in_a_training_step[optimizer=spam]" time="1.0">
<failure message="RuntimeError: called a synchronizing CUDA operation">traceback</failure></testcase>
<testcase classname="tests.test_optim_bnb" name="test_state_dict_resume_is_bit_identical[cuda-lion8bit]" time="0">
<skipped message="bitsandbytes is not installed"/></testcase></testsuite></testsuites>"""


def test_report_of_a_gpu_run_names_the_machine_and_calls_out_every_miss(tmp_path):
    """The report from a GPU run's stage outputs (written here as the stages write them)."""
    from benchmarks._gpu_check import report

    work = tmp_path / "work"
    (work / "logs").mkdir(parents=True)
    (work / "stages.tsv").write_text("env\tpassed\t3\t60\tpython=3.12.3\nsync\tfailed\t40\t150\t1 failed\n"
                                     "bench:runner_overhead\tpassed\t50\t90\twrote\n")
    (work / "env.json").write_text(json.dumps({"gpu": "NVIDIA H200", "driver": "580.159.04, 143771 MiB",
                                               "torch": "2.11.0+cu130", "cuda": "13.0", "python": "3.12.3",
                                               "date": "2026-12-01"}))
    (work / "sync.xml").write_text(JUNIT)
    runs = [{"seed": s, "acc1": acc, "train_s": t, "steady_s": t - 0.5, "wall_s": 20.0, "steps": 475,
             "device": "NVIDIA H200"} for s, acc, t in ((0, 93.9, 5.5), (1, 93.7, 5.3))]
    (work / "airbench.json").write_text(json.dumps({
        "runs": runs, "n": 2, "mean_acc1": 93.8, "std_acc1": 0.14, "mean_train_s": 5.4, "mean_steady_s": 4.9,
        "mean_wall_s": 20.0, "smoke": False, "target": {"train_s": 4.98, "acc1": 94.0}}))
    rows = [{"device": "cuda", "model": "small_cnn", "ratio": 1.12}, {"device": "cuda", "model": "resnet20", "ratio": 1.01}]
    (work / "bench_runner_overhead.json").write_text(json.dumps(
        {"modules": {"runner_overhead": {"doc": "Runner overhead: ...", "rows": rows}}}))
    report(work, tmp_path / "results", budget=480, dry_run=False)
    results = json.loads((tmp_path / "results" / "gpu_check.json").read_text())
    assert results["pytest"]["sync"] == {"passed": 1, "failed": 1, "skipped": 1, "failures": [
        {"test": "test_cuda::test_no_host_sync_in_a_training_step[optimizer=spam]",
         "message": "RuntimeError: called a synchronizing CUDA operation"}]}
    misses = results["misses"]
    assert misses[0] == "runner_overhead small_cnn on CUDA: 1.12x per epoch misses the <= 1.05x target"
    assert misses[1].startswith("airbench: mean top-1 93.80% (n=2) is under 94.0%")
    assert misses[2] == "airbench: 5.40 s of training misses 4.98 s (1.3 x airbench94's 3.83 s on an A100)"
    assert misses[3].startswith("sync: test_cuda::test_no_host_sync_in_a_training_step[optimizer=spam] failed")
    assert misses[4] == "stage sync failed: 1 failed" and len(misses) == 5
    fragment = (tmp_path / "results" / "gpu_check.md").read_text()
    assert fragment.startswith("## CUDA: `make gpu-check` (NVIDIA H200)\n\nMachine: NVIDIA H200, driver 580.159.04")
    assert "| 1 | 93.7 | 5.3 | 4.8 | 20 | 475 | NVIDIA H200 |" in fragment
    assert "| cuda | small_cnn | 1.12 |" in fragment and "1 passed, 1 failed, 1 skipped." in fragment
