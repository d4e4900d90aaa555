#!/usr/bin/env bash
# The order-effect GPU session of one H200 (see README). Runs from a private copy of the repo in
# the background; results go to $RES (default ~/res) as each part finishes, so a poll can fetch what
# is done. STEPS picks the parts, in this order: additive (T = 256 precompute on the small model),
# retrain (batched retraining speed), profile (where a batched step's time goes), gputests, map (validity-map cells, $CELLS, with the truth's
# sensitivity to a perturbation of the initial weights, $PERTURB).
set -u
RES=${RES:-$HOME/res}
STEPS=${STEPS:-additive retrain gputests map}
mkdir -p "$RES" "$HOME/tl"
cp -r . "$HOME/tl/" && cd "$HOME/tl"
export PYTHONPATH=$HOME/tl/src PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
for step in $STEPS; do
  case $step in
    additive) python3 benchmarks/order_effects/additive_speed.py --tokens .bench/order_tokens.pt \
                --out "$RES/additive_speed_h200.json" ${ADDITIVE_ARGS:-} >"$RES/additive_speed.log" 2>&1 ;;
    retrain) python3 benchmarks/order_effects/retrain_speed.py --tokens .bench/order_tokens.pt \
                --out "$RES/retrain_speed_h200.json" ${RETRAIN_ARGS:-} >"$RES/retrain_speed.log" 2>&1 ;;
    profile) python3 benchmarks/order_effects/profile_retrain.py --tokens .bench/order_tokens.pt \
                --out "$RES/profile_retrain_h200.json" >"$RES/profile_retrain.log" 2>&1 ;;
    gputests) python3 -m pytest -q -p no:cacheprovider tests/gpu >"$RES/gpu_tests.log" 2>&1 ;;
    map) python3 benchmarks/order_effects/validity_map.py --tokens .bench/order_tokens.pt \
                --out "$RES/${MAP_NAME:-validity_map_h200_s3}.json" --perturb "${PERTURB:-1e-9,1e-6}" \
                --budget-s "${CELL_BUDGET_S:-600}" \
                --cells "${CELLS:-64:1e-4:0.1:none;64:1e-4:0:none,fut-carry,fut,fut2;64:3e-3:0.1:none,fut-carry}" \
                >"$RES/${MAP_NAME:-validity_map_h200_s3}.log" 2>&1 ;;
  esac
  echo "$step $(date +%T)" >>"$RES/STEPS_DONE"
done
echo done >"$RES/DONE"
