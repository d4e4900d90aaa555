#!/usr/bin/env bash
# The pruning GPU session on one lent H200 (see benchmarks/pruning/README.md), in calls that follow
# each other within the machine's warm time:
#   PART=a     stash the first part of the embedded GGUF (.gguf/part-a, carried) outside the repo
#   PART=b     join it with .gguf/part-b, install the carried wheels (.whl), start the pipeline-driven
#              quality benchmark in the background, run the GPU tests, then wait (up to WAIT_S) for it
#   PART=wait  wait again (up to WAIT_S) for the benchmark
# Results (JSON, logs) are copied to $OUT after every part. The data stage's finished directory is
# carried (outputs/smollm2-prune/data-<hash>): the machine has no Wikipedia package, and the stage
# is found done with the same hash.
set -u
RES=/tmp/res
GGUF=/tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$RES" /tmp/gguf
collect() { cp "$RES"/*.json "$RES"/*.log "$OUT"/ 2>/dev/null; ls -la "$RES"; }
wait_for() {
  local until=$(( $(date +%s) + ${WAIT_S:-500} ))
  while [ ! -e "$RES/DONE" ] && [ "$(date +%s)" -lt "$until" ]; do sleep 5; done
  tail -n 30 "$RES/quality.log"
}
case "${PART:-}" in
  a) cp .gguf/part-a /tmp/gguf/part-a && ls -la /tmp/gguf ;;
  b)
    cat /tmp/gguf/part-a .gguf/part-b > "$GGUF" && sha256sum "$GGUF" | cut -c1-16
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src CI=1 WANDB_MODE=disabled
    rm -f "$RES/DONE"
    setsid nohup bash -c "python3 benchmarks/pruning/quality_smollm2.py --out $RES/quality_smollm2_pipeline_h200.json \
        --device cuda --cpu-masks magnitude --gguf $GGUF --set wandb.mode=disabled >$RES/quality.log 2>&1; \
        echo \$? >$RES/DONE" >/dev/null 2>&1 &
    python3 -m pytest -q -p no:cacheprovider tests/gpu >"$RES/gpu_tests_h200.log" 2>&1
    tail -n 15 "$RES/gpu_tests_h200.log"
    wait_for ;;
  wait) wait_for ;;
esac
collect
