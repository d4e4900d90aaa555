#!/usr/bin/env bash
# SmolLM2-135M order effects at scale on one lent H200 (smollm2_scale.py), in calls that follow each
# other within the machine's warm time:
#   PART=a     stash the first part of the embedded GGUF (.gguf/part-a, carried) outside the repo
#   PART=b     join it with .gguf/part-b, install the carried wheels (.whl: gguf), run the GPU order
#              tests, start the cells ($CELLS; the surrogate with $R training orders and prior $PRIOR)
#              in the background, wait up to WAIT_S for them
#   PART=wait  wait again (up to WAIT_S)
# The token file (.bench/smollm2_tokens.pt, made here by make_tokens.py --gguf) is carried. Results
# (JSON, log) are copied to $OUT after every part.
set -u
source "$(dirname "$0")/../gpu_session.sh"  # RES, GGUF, collect, wait_for LOG, setup_machine
case "${PART:-}" in
  a) stash_part_a ;;
  b)
    setup_machine
    rm -f "$RES/DONE"
    [ -n "${SKIP_TESTS:-}" ] || { python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_order.py \
        -k "planned or estimators_on_gpu" >"$RES/gpu_order_tests_h200.log" 2>&1; tail -n 5 "$RES/gpu_order_tests_h200.log"; }
    setsid nohup bash -c "python3 benchmarks/order_effects/smollm2_scale.py --gguf $GGUF \
        --tokens .bench/smollm2_tokens.pt --out $RES/smollm2_scale_h200.json --train-orders ${R:-128} --prior ${PRIOR:-none} \
        --cells '${CELLS}' >$RES/scale.log 2>&1; echo \$? >$RES/DONE" >/dev/null 2>&1 &
    wait_for "$RES/scale.log" ;;
  wait) wait_for "$RES/scale.log" ;;
esac
collect
