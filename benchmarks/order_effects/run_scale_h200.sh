#!/usr/bin/env bash
# SmolLM2-135M order effects at scale on one lent H200 (smollm2_scale.py), in calls that follow each
# other within the machine's warm time:
#   PART=a     stash the first part of the embedded GGUF (.gguf/part-a, carried) outside the repo
#   PART=b     join it with .gguf/part-b, install the carried wheels (.whl: gguf), run the GPU order
#              tests, start the cells ($CELLS) in the background, wait up to WAIT_S for them
#   PART=wait  wait again (up to WAIT_S)
# The token file (.bench/smollm2_tokens.pt, made here by make_tokens.py --gguf) is carried. Results
# (JSON, log) are copied to $OUT after every part.
set -u
RES=/tmp/res
GGUF=/tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$RES" /tmp/gguf
collect() { cp "$RES"/*.json "$RES"/*.log "$OUT"/ 2>/dev/null; ls -la "$RES"; }
wait_for() {
  local until=$(( $(date +%s) + ${WAIT_S:-500} ))
  while [ ! -e "$RES/DONE" ] && [ "$(date +%s)" -lt "$until" ]; do sleep 5; done
  grep -v "Converting\|Loading" "$RES/scale.log" | tail -n 40
}
case "${PART:-}" in
  a) cp .gguf/part-a /tmp/gguf/part-a && ls -la /tmp/gguf ;;
  b)
    cat /tmp/gguf/part-a .gguf/part-b > "$GGUF" && sha256sum "$GGUF" | cut -c1-16
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src CI=1 WANDB_MODE=disabled PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
    rm -f "$RES/DONE"
    [ -n "${SKIP_TESTS:-}" ] || { python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_order.py \
        -k "planned or estimators_on_gpu" >"$RES/gpu_order_tests_h200.log" 2>&1; tail -n 5 "$RES/gpu_order_tests_h200.log"; }
    setsid nohup bash -c "python3 benchmarks/order_effects/smollm2_scale.py --gguf $GGUF \
        --tokens .bench/smollm2_tokens.pt --out $RES/smollm2_scale_h200.json --train-orders ${R:-128} \
        --cells '${CELLS}' >$RES/scale.log 2>&1; echo \$? >$RES/DONE" >/dev/null 2>&1 &
    wait_for ;;
  wait) wait_for ;;
esac
collect
