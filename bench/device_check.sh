#!/usr/bin/env bash
# What fastdqn's CUDA routes do on real hardware, in about five minutes on one CUDA GPU.
#
# Runs, each under `timeout` inside one time budget: the CUDA tests (`pytest -m cuda`: every
# test skipped without CUDA), bench/learner_step.py --device cuda, bench/throughput.py
# --device cuda against --device cpu (shortened), and a LunarLander-v3 run to solved on
# --device cuda (CartPole-v1, labelled so, where LunarLander-v3 cannot be made), and a 4-agent
# `--seeds` population on CartPole-v1 on --device cuda (each agent's CUDA learner). Then it prints
# one table: what ran, PASS / FAIL / TIMEOUT / NOT RUN, the figures, and why anything did not run.
#
#   bench/device_check.sh                 # on the GPU machine, from anywhere in the checkout
#
# The GPU machines lent to sessions have no network and lack gymnasium, Box2D and pytest: the
# script installs them from bench/wheels/ (bench/fetch_device_wheels.sh fills it; it is
# git-ignored, so pass it along: the device tool's `carry: ["bench/wheels"]`). fastdqn itself is
# used from this checkout through PYTHONPATH (`python -m fastdqn`): an editable install would
# need setuptools>=77 without build isolation, which an offline machine may not have.
#
# Exit status: 0 when every check passed; 1 when one failed, timed out or could not run;
# 2 when nothing could run: no CUDA device, or no torch (a table of "not run" is not a pass).
#
# Environment: PYTHON (default python3); DEVICE_CHECK_BUDGET, the seconds all steps share
# (default 285; each step also has its own cap); DEVICE_CHECK_OUT, where the logs, the JSON
# figures, the LunarLander run dir and device_check.txt (the table) go (default $OUT where the
# device tool sets it, else a new folder under /tmp).
set -u
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
PY=${PYTHON:-python3}
BUDGET=${DEVICE_CHECK_BUDGET:-285}
OUTDIR=${DEVICE_CHECK_OUT:-${OUT:-$(mktemp -d /tmp/fastdqn-device-check.XXXXXX)}}
mkdir -p "$OUTDIR"
WHEELS=$REPO/bench/wheels
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYGAME_HIDE_SUPPORT_PROMPT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
START=$SECONDS
TRAIN_RESERVE=150  # seconds kept back for the LunarLander run and the population after it

CHECKS=("install (gymnasium, Box2D, pytest)" "CUDA tests (pytest -m cuda)"
        "learner_step.py --device cuda" "throughput.py --device cuda" "throughput.py --device cpu"
        "LunarLander-v3 to solved, --device cuda" "--seeds 1-4 population, --device cuda")
NAMES=() RESULTS=() FIGURES=()
row() { NAMES+=("$1"); RESULTS+=("$2"); FIGURES+=("$3"); }

# run_step CAP RESERVE LOG CMD...: CMD under `timeout` (SIGINT, so fastdqn and pytest write
# their results, then SIGKILL 15 s later) for at most CAP seconds and never into the last
# RESERVE seconds of the budget. Sets RC: the command's status, 124/137 timed out, 125 no time.
run_step() {
    local cap=$1 reserve=$2 log=$3
    shift 3
    local left=$((BUDGET - (SECONDS - START) - reserve))
    ((left < cap)) && cap=$left
    if ((cap < 10)); then
        RC=125
        echo "not run: out of the ${BUDGET} s budget" >"$log"
        return
    fi
    echo "+ $* (timeout ${cap} s)" >"$log"
    timeout -k 15 -s INT "$cap" "$@" >>"$log" 2>&1
    RC=$?
    if ((RC == 124 || RC == 137)); then echo "timed out after ${cap} s" >>"$log"; fi
}

# why LOG: the line that explains a step that did not pass (its log's last line).
why() { tail -n 1 "$1" | cut -c1-200; }

# status: PASS, TIMEOUT, NOT RUN or FAIL from RC.
status() {
    case $RC in
        0) echo PASS ;;
        124 | 137) echo TIMEOUT ;;
        125) echo "NOT RUN" ;;
        *) echo FAIL ;;
    esac
}

# add_row CHECK KIND LOG [FILE...]: the row of a step that ran, its verdict and figures read
# from its log and files by bench/device_check_report.py (which fails a step that exited 0 but
# measured a fallback, ran no test or did not solve).
add_row() {
    local check=$1 kind=$2 line
    shift 2
    line=$("$PY" "$REPO/bench/device_check_report.py" "$kind" "$(status)" "$@")
    row "$check" "${line%%$'\t'*}" "${line#*$'\t'}"
}

print_table() {
    local i out=$OUTDIR/device_check.txt
    {
        echo
        echo "fastdqn device check, $(date -u '+%Y-%m-%d %H:%M UTC'), $((SECONDS - START)) s: $MACHINE"
        printf '%-40s | %-8s | %s\n' check result "figures / why"
        printf '%-40s-+-%-8s-+-%s\n' "$(printf '%.0s-' {1..40})" "--------" "--------------------"
        for i in "${!NAMES[@]}"; do
            printf '%-40s | %-8s | %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${FIGURES[$i]}"
        done
        echo "logs and figures: $OUTDIR"
    } | tee "$out"
}

finish() {
    print_table
    local r
    for r in "${RESULTS[@]}"; do
        [[ $r == PASS ]] || exit 1
    done
    exit 0
}

# --- the device --------------------------------------------------------------------------------
PROBE=$("$PY" -c 'import sys, torch
ok = torch.cuda.is_available()
print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, "
      + (f"{torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} CUDA device(s))"
         if ok else "no CUDA device (torch.cuda.is_available() is False)"))
sys.exit(0 if ok else 3)' 2>"$OUTDIR/probe.log")
PROBE_RC=$?
MACHINE=${PROBE:-"torch does not import: $(tail -n 1 "$OUTDIR/probe.log")"}
if ((PROBE_RC != 0)); then
    reason=$([[ $PROBE_RC == 3 ]] && echo "no CUDA device" || echo "torch does not import")
    for c in "${CHECKS[@]}"; do row "$c" "NOT RUN" "$reason: nothing was run"; done
    print_table
    exit 2
fi

# --- install -----------------------------------------------------------------------------------
deps_import() {
    "$PY" -c 'import gymnasium, Box2D, pygame, pytest, hypothesis' >>"$OUTDIR/install.log" 2>&1
}
: >"$OUTDIR/install.log"
if deps_import; then
    row "${CHECKS[0]}" PASS "already installed"
elif ! compgen -G "$WHEELS/*.whl" >/dev/null; then
    row "${CHECKS[0]}" FAIL "no wheels in bench/wheels: run bench/fetch_device_wheels.sh where \
there is network and bring bench/wheels along (device tool: carry [\"bench/wheels\"])"
else
    run_step 90 "$TRAIN_RESERVE" "$OUTDIR/install.log" "$PY" -m pip install --no-index \
        --find-links "$WHEELS" "gymnasium[box2d]" pytest hypothesis
    how="pip install --no-index from bench/wheels"
    if ! deps_import; then  # no pip, or site-packages not writable: unpack onto PYTHONPATH
        SITE=$(mktemp -d /tmp/fastdqn-device-site.XXXXXX)
        "$PY" - "$SITE" "$WHEELS"/*.whl >>"$OUTDIR/install.log" 2>&1 <<'EOF'
import importlib.util, sys, zipfile
from pathlib import Path
site, *wheels = sys.argv[1:]
for wheel in wheels:  # the machine's own numpy stays: numba is built against it
    if Path(wheel).name.startswith("numpy-") and importlib.util.find_spec("numpy"):
        continue
    zipfile.ZipFile(wheel).extractall(site)
EOF
        export PYTHONPATH="$PYTHONPATH:$SITE"
        how="wheels unpacked onto PYTHONPATH ($SITE): pip could not install them"
    fi
    if deps_import; then
        row "${CHECKS[0]}" PASS "$how"
    else
        row "${CHECKS[0]}" FAIL "$(why "$OUTDIR/install.log")"
    fi
fi
if [[ ${RESULTS[0]} != PASS ]]; then
    for c in "${CHECKS[@]:1}"; do row "$c" "NOT RUN" "gymnasium, Box2D or pytest missing (see install)"; done
    finish
fi
GYM=$("$PY" -c 'import gymnasium, Box2D; print(f"gymnasium {gymnasium.__version__}, Box2D {Box2D.__version__}")' 2>/dev/null)
FIGURES[0]="${FIGURES[0]}; $GYM"

ENV=LunarLander-v3
if ! "$PY" -c 'import gymnasium as gym; gym.make("LunarLander-v3").reset(seed=0)' \
        >"$OUTDIR/lunarlander_make.log" 2>&1; then
    ENV=CartPole-v1
    NO_LUNAR="LunarLander-v3 cannot be made ($(tail -n 1 "$OUTDIR/lunarlander_make.log" | cut -c1-120))"
    CHECKS[5]="CartPole-v1 to solved, --device cuda"
fi

# --- the CUDA tests ----------------------------------------------------------------------------
rm -f "$OUTDIR/cuda_tests.xml"
run_step 100 "$TRAIN_RESERVE" "$OUTDIR/cuda_tests.log" "$PY" -m pytest -q -m cuda -rs \
    -p no:cacheprovider --continue-on-collection-errors --junitxml="$OUTDIR/cuda_tests.xml" tests
add_row "${CHECKS[1]}" tests "$OUTDIR/cuda_tests.log" "$OUTDIR/cuda_tests.xml"

# --- the learner step alone --------------------------------------------------------------------
rm -f "$OUTDIR/learner_step.json"
run_step 60 "$TRAIN_RESERVE" "$OUTDIR/learner_step.log" "$PY" bench/learner_step.py \
    --device cuda --json "$OUTDIR/learner_step.json"
add_row "${CHECKS[2]}" learner_step "$OUTDIR/learner_step.log" "$OUTDIR/learner_step.json"

# --- throughput, CUDA against the CPU ----------------------------------------------------------
declare -A TP_RC
for device in cuda cpu; do
    rm -f "$OUTDIR/throughput_$device.json"
    run_step 60 "$TRAIN_RESERVE" "$OUTDIR/throughput_$device.log" "$PY" bench/throughput.py \
        --device "$device" --env "$ENV" --steps 20000 --warmup 2000 \
        --json "$OUTDIR/throughput_$device.json"
    TP_RC[$device]=$RC
done
RC=${TP_RC[cuda]}
add_row "${CHECKS[3]}" throughput "$OUTDIR/throughput_cuda.log" "$OUTDIR/throughput_cuda.json" \
    "$OUTDIR/throughput_cpu.json"
RC=${TP_RC[cpu]}
add_row "${CHECKS[4]}" throughput "$OUTDIR/throughput_cpu.log" "$OUTDIR/throughput_cpu.json"

# --- a run to solved ---------------------------------------------------------------------------
RUN=$OUTDIR/train_$ENV
rm -rf "$RUN"
run_step 200 30 "$OUTDIR/train.log" "$PY" -m fastdqn train --device cuda --env "$ENV" --seed 1 \
    --total-timesteps 500000 --run-dir "$RUN" --no-progress
add_row "${CHECKS[5]}" train "$OUTDIR/train.log" "$RUN/summary.json"
[[ -n ${NO_LUNAR:-} ]] && FIGURES[5]="$NO_LUNAR; ${FIGURES[5]}"

# --- a population on the GPU: 4 agents' CUDA-graph learners in one process -------------------
POP=$OUTDIR/population
rm -rf "$POP"
run_step 60 0 "$OUTDIR/population.log" "$PY" -m fastdqn train --device cuda --seeds 1-4 \
    --env CartPole-v1 --num-envs 4 --total-timesteps 20000 --run-dir "$POP" --no-progress
add_row "${CHECKS[6]}" population "$OUTDIR/population.log" "$POP/population.json"
finish
