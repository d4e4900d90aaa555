#!/usr/bin/env bash
# Debian packages the tests need. Nothing to install yet beyond Python packages; the Slurm tests
# (slurm/start.sh) will add theirs here.
exit 0
