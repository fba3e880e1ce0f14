#!/usr/bin/env bash
# CUDA check of the benches: every bench on one GPU at small sizes, then a short paper-shaped GILL run.
#
#   bash bench/gpu_check.sh            # bf16; GPU_CHECK_DTYPE=fp16 for the inference benches in fp16
#
# Python: $PYTHON, else .venv/bin/python, else python3 (the checkout's code comes first on PYTHONPATH).
# Without a visible CUDA device it prints one line and exits 2 before running anything. Otherwise it runs every
# bench with --device cuda --dtype $GPU_CHECK_DTYPE (train_step and paper_shaped always bf16: gill trains in fp32
# or bf16), each under a time limit of $GPU_CHECK_TIMEOUT seconds (default 300), keeps going when one fails, and
# exits 1 naming the failed ones. Peak memory and throughput are in each bench's own output. The whole check is
# meant to take under 10 minutes on one A100/H100 (the paper-shaped run: a few minutes).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
  PY=.venv/bin/python
else
  PY=python3
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
DTYPE="${GPU_CHECK_DTYPE:-bf16}"
LIMIT="${GPU_CHECK_TIMEOUT:-300}"

if ! probe="$("$PY" -c 'import torch; print(torch.cuda.is_available(), torch.__version__, torch.version.cuda is not None)' 2>&1)"; then
  echo "gpu_check: cannot import torch with $PY ($probe); set PYTHON to the project's python" >&2
  exit 2
fi
read -r available version built <<<"$probe"
if [[ "$available" != "True" ]]; then
  echo "gpu_check: no CUDA device visible (torch $version, CUDA build: $([[ $built == True ]] && echo yes || echo no)); run it on a GPU machine" >&2
  exit 2
fi
"$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")'

failed=()
run() {  # run NAME COMMAND...: one bench under the time limit; a failure is recorded, not fatal
  local name="$1" start="$SECONDS"
  shift
  echo
  echo "=== $name: $*"
  if timeout "$LIMIT" "$@"; then
    echo "=== $name: ok ($((SECONDS - start)) s)"
  else
    echo "=== $name: FAILED (exit $?, $((SECONDS - start)) s)"
    failed+=("$name")
  fi
}
has_device_flag() {  # a bench written elsewhere may not take --device yet: skip it rather than fail
  "$PY" "bench/$1.py" --help 2>/dev/null | grep -q -- "--device"
}

CUDA=(--device cuda --dtype "$DTYPE")
run tiny_zoo "$PY" bench/tiny_zoo.py "${CUDA[@]}"
run train_step "$PY" bench/train_step.py --device cuda --dtype bf16
run retrieval "$PY" bench/retrieval.py "${CUDA[@]}" --sizes 100k --data clustered --queries 50
run scene_metric "$PY" bench/scene_metric.py "${CUDA[@]}" --n 40
run world_sd "$PY" bench/world_sd.py "${CUDA[@]}" --n 32 --steps 20
run startup "$PY" bench/startup.py "${CUDA[@]}" --rounds 1
for other in precompute generation; do
  if [[ -f "bench/$other.py" ]] && has_device_flag "$other"; then
    run "$other" "$PY" "bench/$other.py" "${CUDA[@]}"
  elif [[ -f "bench/$other.py" ]]; then
    echo && echo "=== $other: skipped (no --device option)"
  fi
done
run paper_scale "$PY" bench/paper_scale.py "${CUDA[@]}" --gpu h100 --gpus 1 --db "${TMPDIR:-/tmp}/gpu-check-paper-scale.duckdb"
run paper_shaped "$PY" bench/paper_shaped.py --device cuda --dtype bf16 --scale paper

echo
if ((${#failed[@]})); then
  echo "gpu_check: failed: ${failed[*]}"
  exit 1
fi
echo "gpu_check: every bench ran on CUDA"
