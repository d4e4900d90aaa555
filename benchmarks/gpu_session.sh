# Sourced by the GPU-session scripts (benchmarks/*/run_*h200.sh): where results wait on the lent
# machine, where the embedded GGUF is joined, and the three steps every session repeats.
#   stash_part_a     keep the carried first part of the GGUF (.gguf/part-a) outside the repo (PART=a)
#   collect          copy the results ($RES/*.json, *.log) to $OUT, which the device tool brings back
#   wait_for LOG     wait (up to $WAIT_S) for the background job's $RES/DONE, then show LOG's tail
#   install_wheels   the carried wheels (.whl) into /tmp/site (an earlier call's install is kept)
#   setup_machine    join the GGUF (part a stashed by an earlier call, part b carried) unless joined,
#                    install_wheels, export the paths and offline settings
RES=/tmp/res
GGUF=/tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$RES" /tmp/gguf
stash_part_a() { cp .gguf/part-a /tmp/gguf/part-a && ls -la /tmp/gguf; }
collect() { cp "$RES"/*.json "$RES"/*.log "$OUT"/ 2>/dev/null; ls -la "$RES"; }
wait_for() {
  local until=$(( $(date +%s) + ${WAIT_S:-500} ))
  while [ ! -e "$RES/DONE" ] && [ "$(date +%s)" -lt "$until" ]; do sleep 5; done
  grep -v "Converting\|Loading" "$1" | tail -n 40
}
install_wheels() {  # the carried wheels (.whl) into /tmp/site, once per machine
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  fi
  [ -d /tmp/site ] || { echo "error: no wheels carried and none installed by an earlier call"; exit 1; }
}
setup_machine() {
  [ -s "$GGUF" ] || cat /tmp/gguf/part-a .gguf/part-b > "$GGUF"
  sha256sum "$GGUF" | cut -c1-16
  install_wheels
  export PYTHONPATH=/tmp/site:$PWD/src CI=1 WANDB_MODE=disabled PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
}
