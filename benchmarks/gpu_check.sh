#!/usr/bin/env bash
# make gpu-check [DRY=1]: every CUDA number divrun promises, in one call on a bare GPU machine.
#
#   bash benchmarks/gpu_check.sh [--dry-run]        # on the GPU machine: bash alone, from the tree's root
#
# Installs .gpu/wheels (make gpu-wheels) and divrun with --no-deps into a target folder, then runs the stages
# below inside a time budget, each under its own `timeout`, so a hang costs one stage, not the call. Writes
# gpu_check.json, gpu_check.md (a benchmarks/RESULTS.md fragment) and gpu_check.log into $OUT, else
# $GPU_CHECK_RESULTS, else outputs/gpu_check/. Exit status 1 when a stage failed or ran out of time.
#
# stage               what                                                                           limit (s)
# env                 Python, torch, CUDA, the GPU                                                       60
# install             the wheels and divrun into the target; imports checked                           150
# data (background)   the real CIFAR-10 unpacked from .gpu/data (or $GPU_CHECK_CIFAR, ../shared/data)  240
# tests               the `cuda`-marked tests but the host-sync ones                                   240
# sync                test_no_host_sync_in_a_training_step: every optimizer, loss, ... under sync debug  150
# airbench            GPU_CHECK_AIRBENCH_RUNS (3) seeds of recipes/airbench.yaml on CIFAR-10            150
# bench:<module>      `python -m benchmarks <module> --devices cuda`: runner_overhead, optimizers,
#                     data_pipeline, throughput                                             90, 60, 60, 240
# report              the JSON and the fragment (outside the budget)                                     60
#
# Settings (environment): GPU_CHECK_BUDGET seconds for all stages (480; 1200 for a dry run); GPU_CHECK_STAGES a comma-separated
# subset of the stages; GPU_CHECK_TIMEOUT_<stage> one stage's limit (':' in a name as '_'); PYTHON the
# interpreter (python3); GPU_DIR the wheels and data folder (.gpu); GPU_CHECK_CIFAR a folder holding
# cifar-10-batches-py; GPU_CHECK_WORK the scratch folder (a new one under /tmp). --dry-run (DRY=1): hide every
# GPU, so CUDA stages say "skipped: no CUDA" after rehearsing what runs without one.
# Sourced (`source benchmarks/gpu_check.sh`), it only defines the functions: the CI test drives them.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-}  # default 480 s, 1200 s for a dry run (a busy CPU takes its time)
ALL_STAGES=env,install,data,tests,sync,airbench,bench:runner_overhead,bench:optimizers,bench:data_pipeline,bench:throughput
STAGES=${GPU_CHECK_STAGES:-$ALL_STAGES}
GPU_DIR=${GPU_DIR:-$REPO/.gpu}
WORK=${GPU_CHECK_WORK:-}
RESULTS=${OUT:-${GPU_CHECK_RESULTS:-$REPO/outputs/gpu_check}}
DRY_RUN=${DRY_RUN:-0}
START=$SECONDS

setup() {  # the budget, the scratch folder, the target's paths, a fresh stage record
    [[ -n $BUDGET ]] || BUDGET=$([[ $DRY_RUN == 1 ]] && echo 1200 || echo 480)
    [[ -n $WORK ]] || WORK=$(mktemp -d "${TMPDIR:-/tmp}/divrun-gpu-check.XXXXXX")
    mkdir -p "$WORK/logs" "$RESULTS"
    : >"$WORK/stages.tsv"
    TARGET=$WORK/site
    export PYTHONPATH=$TARGET:$REPO${PYTHONPATH:+:$PYTHONPATH} PATH=$TARGET/bin:$PATH
    export WANDB_MODE=disabled PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1 PYTHONDONTWRITEBYTECODE=1
    export REPO PYTHON GPU_DIR WORK TARGET
    if [[ $DRY_RUN == 1 ]]; then export CUDA_VISIBLE_DEVICES=""; fi
}

selected() { [[ ",$STAGES," == *",$1,"* ]]; }

record() {  # record NAME STATUS SECONDS LIMIT NOTE
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5//$'\t'/ }" >>"$WORK/stages.tsv"
    printf '%-24s %-8s %4ss / %-4s %s\n' "$1" "$2" "$3" "$4" "$5"
}

budget_left() { echo $((BUDGET - (SECONDS - START))); }

limit_of() {  # limit_of NAME DEFAULT: GPU_CHECK_TIMEOUT_<name> or the default, cut to the budget left
    local var="GPU_CHECK_TIMEOUT_${1//[:-]/_}" left
    local limit=${!var:-$2}
    left=$(budget_left)
    echo $((limit < left ? limit : left))
}

finish_stage() {  # finish_stage NAME RC STARTED LIMIT: the outcome from the exit status, the note from the log
    local name=$1 rc=$2 started=$3 limit=$4 status log="$WORK/logs/${1//:/_}.log" note
    case $rc in
        0) status=passed ;;
        77) status=skipped ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    note=$(grep -v '^[[:space:]]*$' "$log" 2>/dev/null | tail -n 1 | cut -c1-200)
    [[ $status == timeout ]] && note="no result within ${limit} s; last line: $note"
    record "$name" "$status" $((SECONDS - started)) "$limit" "$note"
    if [[ $status == failed || $status == timeout ]]; then tail -n 15 "$log" | sed 's/^/    | /'; fi
}

stage() {  # stage NAME DEFAULT_LIMIT COMMAND...: COMMAND in $WORK under its own timeout, outcome recorded
    local name=$1 limit started rc
    selected "$name" || return 0
    limit=$(limit_of "$name" "$2")
    shift 2
    if (($(budget_left) < 5)); then record "$name" skipped 0 0 "the ${BUDGET} s budget is spent"; return 0; fi
    started=$SECONDS
    (cd "$WORK" && timeout -k 10 "$limit" "$@") >"$WORK/logs/${name//:/_}.log" 2>&1
    rc=$?
    finish_stage "$name" "$rc" "$started" "$limit"
}

declare -A BACKGROUND  # name -> "pid started limit" of a stage running beside the others

stage_background() {  # stage_background NAME DEFAULT_LIMIT COMMAND...: as stage, collected by stage_wait
    local name=$1 limit
    selected "$name" || return 0
    limit=$(limit_of "$name" "$2")
    shift 2
    (cd "$WORK" && exec timeout -k 10 "$limit" "$@") >"$WORK/logs/$name.log" 2>&1 &
    BACKGROUND[$name]="$! $SECONDS $limit"
}

stage_wait() {  # stage_wait NAME: wait for a background stage and record it
    local name=$1 pid started limit rc
    [[ -n ${BACKGROUND[$name]:-} ]] || return 0
    read -r pid started limit <<<"${BACKGROUND[$name]}"
    wait "$pid"
    rc=$?
    unset "BACKGROUND[$name]"
    finish_stage "$name" "$rc" "$started" "$limit"
}

stop_background() {  # on exit: a background stage never outlives the script
    local job
    for job in "${BACKGROUND[@]}"; do kill -TERM "${job%% *}" 2>/dev/null; done
}

have_cuda() { "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

skip_without_cuda() {  # the last word of a CUDA stage that ran on a machine without one
    echo "skipped: no CUDA${1:+ ($1)}"
    exit 77
}

# ---- the stages' commands (exported: `timeout` runs them through bash -c) --------------------------------
install_divrun() {
    set -e
    local wheels=("$GPU_DIR"/wheels/*.whl) source=$WORK/source
    mkdir -p "$TARGET" "$source"
    if [[ -e ${wheels[0]} ]]; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$TARGET" \
            "${wheels[@]}"
        echo "installed ${#wheels[@]} wheels from $GPU_DIR/wheels"
    fi
    # a copy of what the package is built from, so the build leaves the tree untouched
    cp -r "$REPO"/{pyproject.toml,README.md,runner,conf,recipes,hydra_plugins} "$source"/
    if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade \
        --target "$TARGET" "$source" >"$WORK/logs/pip-divrun.txt" 2>&1; then
        cat "$WORK/logs/pip-divrun.txt"
        exit 1
    fi
    "$PYTHON" -m benchmarks._gpu_check verify --target "$TARGET" --wheels "$GPU_DIR/wheels"
    echo "divrun and its wheels in $TARGET"
}

prepare_data() {
    set -e
    if [[ -n ${GPU_CHECK_CIFAR:-} ]]; then
        ln -sfn "$GPU_CHECK_CIFAR" "$WORK/cifar"
    else
        local script
        for script in "$GPU_DIR/data/prepare_cifar10.py" "$REPO/../shared/data/prepare_cifar10.py"; do
            if [[ -f $script && -f $(dirname "$script")/cifar10-jpeg.tar.xz ]]; then break; fi
            script=
        done
        [[ -n $script ]] || { echo "skipped: no CIFAR-10 (make gpu-wheels copies it into .gpu/data)"; exit 77; }
        "$PYTHON" "$script" "$WORK/cifar"
    fi
    test -f "$WORK/cifar/cifar-10-batches-py/test_batch"
    echo "CIFAR-10 in $WORK/cifar"
}

cuda_tests() {  # cuda_tests JUNIT_NAME PYTEST_ARGS...: the `cuda`-marked tests of every test file that has some
    local name=$1 files rc
    shift
    mapfile -t files < <(grep -l 'mark\.cuda' "$REPO"/tests/test_*.py)
    "$PYTHON" -m pytest "${files[@]}" -m cuda --rootdir "$REPO" -p no:cacheprovider -q -rfE -o timeout=150 \
        --junitxml "$WORK/$name.xml" "$@"
    rc=$?
    if ((rc == 0)) && ! have_cuda; then skip_without_cuda "the tests were collected; each skips on the CPU"; fi
    exit $rc
}

airbench_runs() {
    set -e
    [[ -f $WORK/cifar/cifar-10-batches-py/test_batch ]] || { echo "skipped: no CIFAR-10 (see the data stage)"; exit 77; }
    if have_cuda; then
        "$PYTHON" -m benchmarks._gpu_check airbench --data "$WORK/cifar" --out "$WORK/airbench.json" \
            --runs "${GPU_CHECK_AIRBENCH_RUNS:-3}"
    else
        "$PYTHON" -m benchmarks._gpu_check airbench --data "$WORK/cifar" --out "$WORK/airbench.json" --smoke
    fi
}

bench_module() {  # bench_module MODULE: its CUDA rows
    set -e
    "$PYTHON" -m benchmarks "$1" --devices cuda --out "$WORK/bench_$1.md" --json "$WORK/bench_$1.json"
    have_cuda || skip_without_cuda
}

export -f install_divrun prepare_data cuda_tests airbench_runs bench_module have_cuda skip_without_cuda

main() {
    [[ ${1:-} == --dry-run ]] && DRY_RUN=1
    setup
    trap stop_background EXIT
    echo "divrun gpu-check: budget ${BUDGET} s, work folder $WORK, results into $RESULTS$([[ $DRY_RUN == 1 ]] && echo ', dry run (CUDA hidden)')"
    stage env 60 "$PYTHON" -m benchmarks._gpu_check env --out "$WORK/env.json"
    stage install 150 bash -c install_divrun
    stage_background data 240 bash -c prepare_data
    stage tests 240 bash -c 'cuda_tests tests -k "not host_sync"'
    stage sync 150 bash -c 'cuda_tests sync -k host_sync'
    stage_wait data
    stage airbench 150 bash -c airbench_runs
    stage bench:runner_overhead 90 bash -c 'bench_module runner_overhead'
    stage bench:optimizers 60 bash -c 'bench_module optimizers'
    stage bench:data_pipeline 60 bash -c 'bench_module data_pipeline'
    stage bench:throughput 240 bash -c 'bench_module throughput'
    echo "stages took $((SECONDS - START)) s of the ${BUDGET} s budget"
    (cd "$WORK" && timeout 60 "$PYTHON" -m benchmarks._gpu_check report --work "$WORK" --results "$RESULTS" \
        --budget "$BUDGET" --elapsed $((SECONDS - START)) $([[ $DRY_RUN == 1 ]] && echo --dry-run))
    cut -f1-4 "$WORK/stages.tsv" | column -t 2>/dev/null || cut -f1-4 "$WORK/stages.tsv"
    ! cut -f2 "$WORK/stages.tsv" | grep -q -E '^(failed|timeout)$'
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
