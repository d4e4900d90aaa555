#!/usr/bin/env bash
# The order-effect GPU session of one H200 (see README): GPU tests, retraining speed, validity-map
# cells at low learning rates. Runs from a private copy of the repo in the background; results go
# to $RES (default ~/res) as each part finishes, so a poll can fetch what is done.
set -u
RES=${RES:-$HOME/res}
mkdir -p "$RES" "$HOME/tl"
cp -r . "$HOME/tl/" && cd "$HOME/tl"
export PYTHONPATH=$HOME/tl/src
python3 -m pytest -q -p no:cacheprovider tests/gpu >"$RES/gpu_tests.log" 2>&1
python3 benchmarks/order_effects/retrain_speed.py --tokens .bench/order_tokens.pt \
  --out "$RES/retrain_speed_h200.json" >"$RES/retrain_speed.log" 2>&1
python3 benchmarks/order_effects/validity_map.py --tokens .bench/order_tokens.pt --out "$RES/validity_map_lowlr_h200.json" \
  --additive-chunk 32 --budget-s "${CELL_BUDGET_S:-900}" \
  --cells "${CELLS:-64:1e-4:0.1:none,fut-carry,fut-carry-secant,fut-carry-nocurv,fut,additive;64:3e-4:0.1:none,fut-carry,fut-carry-nocurv;256:1e-4:0.1:none,fut-carry;64:3e-3:0.1:none,fut-carry}" \
  >"$RES/validity_map_lowlr.log" 2>&1
echo done >"$RES/DONE"
