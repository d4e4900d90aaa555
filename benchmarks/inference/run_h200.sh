#!/usr/bin/env bash
# Dense against 2:4 at serving time on one lent H200, in calls that follow each other within the
# machine's warm time (benchmarks/gpu_session.sh):
#   PART=a   stash .gguf/part-a; the per-layer kernels (kernels_2to4.py) and the GPU inference tests
#   PART=b   join the GGUF, install the wheels; whole models (model_speed.py): SmolLM2-135M (its GGUF
#            weights) and the Llama-2-7B shape (random weights); then, if NEXT is set, start that
#            command in the background (e.g. the order-effects cells) and wait for it
#   PART=wait  wait again for the background command
set -u
source "$(dirname "$0")/../gpu_session.sh"  # RES, GGUF, collect, wait_for LOG, setup_machine
B=benchmarks/inference
case "${PART:-}" in
  a)
    stash_part_a
    export PYTHONPATH=$PWD/src CI=1
    python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_inference.py >"$RES/gpu_inference_tests_h200.log" 2>&1
    tail -n 5 "$RES/gpu_inference_tests_h200.log"
    python3 $B/kernels_2to4.py --out "$RES/kernels_2to4_h200.json" 2>&1 | tee "$RES/kernels_2to4_h200.log" | tail -n 25 ;;
  b)
    setup_machine
    python3 $B/model_speed.py --model smollm2 --gguf "$GGUF" --out "$RES/model_speed_smollm2_h200.json" \
        >"$RES/model_speed_smollm2_h200.log" 2>&1; grep -v "^   " "$RES/model_speed_smollm2_h200.log" | tail -n 9
    python3 $B/model_speed.py --model 7b --out "$RES/model_speed_7b_h200.json" >"$RES/model_speed_7b_h200.log" 2>&1
    grep -v "^   " "$RES/model_speed_7b_h200.log" | tail -n 9
    if [ -n "${NEXT:-}" ]; then
      rm -f "$RES/DONE"
      setsid nohup bash -c "$NEXT >$RES/next.log 2>&1; echo \$? >$RES/DONE" >/dev/null 2>&1 &
      WAIT_S=${WAIT_S:-60} wait_for "$RES/next.log"
    fi ;;
  wait) wait_for "$RES/next.log" ;;
esac
collect
