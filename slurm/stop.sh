#!/usr/bin/env bash
# Stop the cluster started by slurm/start.sh, by the PIDs it recorded; waits until each is gone
# (an exited daemon can linger as a zombie for a while: check the process state, not kill -0).
D=${TAYLORLAB_SLURM_DIR:-/tmp/taylorlab-slurm}
for name in slurmd slurmctld slurmdbd mariadb munged; do
  f="$D/run/$name.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    s=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)
    { [ -z "$s" ] || [ "$s" = Z ]; } && break
    sleep 0.1
  done
  rm -f "$f"
done
echo "[slurm/stop] stopped" >&2
