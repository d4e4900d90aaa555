#!/usr/bin/env bash
# Debian packages `make test` needs: the Slurm cluster's daemons (slurm/ensure-packages.sh) and
# Chromium for the dashboard test. Installs only what is missing; needs root (CI runs as root).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
bash "$HERE/../slurm/ensure-packages.sh"
if ! command -v chromium >/dev/null 2>&1; then
  echo "[test packages] installing chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
