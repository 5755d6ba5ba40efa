#!/usr/bin/env bash
# GPU benchmarks (issue 13, item 6), one JSON line each on stdout, for a machine with an NVIDIA GPU:
#   1. tree:    the beta sweep at the largest tree size here (benchmarks/bench_tree.py, $TREE_ARGS);
#   2. scoring: a Pythia-1.4B-shaped reward model, bfloat16, 8 x 1024 tokens, JAX and PyTorch both on the GPU;
#   3. search:  one GCG step of a 7B reward model (Starling-RM-7B's shape, random bfloat16 weights), and the
#               projected hours of the paper's 40 runs x 1000 iterations.
# It installs nothing: it runs with $PY (default .venv/bin/python if there, else python3), with the repository
# on PYTHONPATH, offline. Each benchmark runs under its own time limit (in all 510 s, to fit 9 minutes);
# one that fails or runs out of time prints {"bench": ..., "error": ...} and the others still run. stderr of
# each goes to $LOG_DIR (default /tmp/gpu_bench). With GPU_SH_DRY=1 it only prints the commands (no GPU needed);
# GPU_SH_CPU=1 runs without a GPU (for tests, with tiny *_ARGS).
#
#     bash benchmarks/gpu.sh > gpu.jsonl
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
LOG_DIR=${LOG_DIR:-/tmp/gpu_bench}
# The tree: 16^7 = 268M leaves (~1 GB per float32 level, a few GB in all), without bench_tree.py's NumPy twin
# (float64 on the host: minutes at this size; its agreement is checked at 8^7 by the CPU runs and the tests).
TREE_ARGS=${TREE_ARGS:-"--vocab 16 --depth 7 --betas 64 --repeats 3 --no-numpy --json"}
SCORING_ARGS=${SCORING_ARGS:-"--size 1.4b --dtype bfloat16 --length 1024 --batch 8 --repeats 5 --torch-device cuda --json"}
SEARCH_ARGS=${SEARCH_ARGS:-"--size 7b --length 128 --topk 3 --candidates 64 --edits 2 --steps 5 --repeats 3 \
--scan 5 --restarts 0 --no-target --no-torch"}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

# bench NAME SECONDS SCRIPT ARGS...: the script's last JSON line, or its text output as one JSON line.
bench() {
  local name=$1 limit=$2 script=$3
  shift 3
  if [ -n "${GPU_SH_DRY:-}" ]; then
    echo "$name $limit $script $*"
    return 0
  fi
  local t0=$SECONDS out rc
  out=$(timeout "$limit" "$PY" "$script" "$@" 2>"$LOG_DIR/$name.err")
  rc=$?
  NAME=$name RC=$rc LIMIT=$limit WALL=$((SECONDS - t0)) OUT_TEXT=$out ERR_FILE="$LOG_DIR/$name.err" "$PY" - <<'EOF'
import json, os
name, rc, text = os.environ["NAME"], int(os.environ["RC"]), os.environ["OUT_TEXT"]
row = {"bench": name, "wall_s": int(os.environ["WALL"])}
lines = [l for l in text.splitlines() if l.strip()]
parsed = None
for line in reversed(lines):
    try:
        parsed = json.loads(line)
        break
    except ValueError:
        continue
if rc == 0 and isinstance(parsed, dict):
    row |= parsed
elif rc == 0:
    row["output"] = lines                      # a script that prints text (bench_tree.py)
else:
    err = open(os.environ["ERR_FILE"], errors="replace").read().strip().splitlines()
    row["error"] = (f"timed out after {os.environ['LIMIT']} s" if rc == 124 else f"exit {rc}") + \
        (f": {err[-1]}" if err else "")
    row["output"] = lines
print(json.dumps(row))
EOF
}

if [ -z "${GPU_SH_DRY:-}" ]; then
  mkdir -p "$LOG_DIR"
  if [ -z "${GPU_SH_CPU:-}" ] && ! "$PY" -c 'import sys, jax; sys.exit(jax.default_backend() != "gpu")' \
      2>"$LOG_DIR/check.err"; then
    echo '{"bench": "gpu.sh", "error": "jax sees no GPU here (its default backend is not gpu)"}'
    exit 3
  fi
  "$PY" -c 'import json, jax, platform; print(json.dumps({"bench": "machine", "jax": jax.__version__,
    "devices": [d.device_kind for d in jax.devices()], "host": platform.node()}))'
fi

# shellcheck disable=SC2086  # the *_ARGS are word lists
bench tree 120 benchmarks/bench_tree.py $TREE_ARGS
# PyTorch shares the GPU with JAX here: JAX takes half its memory instead of 75%.
XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 bench scoring 150 benchmarks/bench_scoring.py $SCORING_ARGS
bench search 240 benchmarks/bench_search.py $SEARCH_ARGS
