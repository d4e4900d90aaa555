#!/usr/bin/env bash
# Debian packages of the local Slurm cluster (slurm/start.sh). Installs only what is missing;
# needs root (CI and the development machines run as root).
set -euo pipefail
need=0
for cmd in slurmctld slurmd sbatch slurmdbd munged mariadbd; do
  command -v "$cmd" >/dev/null 2>&1 || need=1
done
if [ "$need" = 1 ]; then
  echo "[slurm] installing slurmctld slurmd slurm-client munge slurmdbd mariadb-server" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null
fi
