#!/usr/bin/env bash
# Jane Austen's six novels for the third text domain (data.domains: austen). The only registry copy
# is Debian's r-cran-janeaustenr: download the .deb with apt (no R, nothing installed system-wide)
# and unpack its data folder into DEST (default: the project's virtualenv, .venv/share/janeaustenr),
# where taylorlab.data.corpus.austen_dir() finds it. Idempotent.
set -euo pipefail
DEST=${1:-.venv/share/janeaustenr}
if [ -f "$DEST/Rdata.rdx" ] && [ -f "$DEST/Rdata.rdb" ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "fetch-austen: apt-get not found; install r-cran-janeaustenr's data some other way and set TAYLORLAB_AUSTEN_DIR, or use data.domains=[wiki,shakespeare]" >&2
  exit 1
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
if ! apt-get download r-cran-janeaustenr >/dev/null 2>&1; then
  # a fresh machine may have no package lists yet
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get download r-cran-janeaustenr >/dev/null 2>&1 || {
    echo "fetch-austen: apt-get download r-cran-janeaustenr failed (no Debian archive reachable?)" >&2; exit 1; }
fi
dpkg-deb -x r-cran-janeaustenr_*.deb x
cd - >/dev/null
mkdir -p "$DEST.tmp"
cp "$WORK"/x/usr/lib/R/site-library/janeaustenr/data/Rdata.* "$DEST.tmp/"
cp "$WORK"/x/usr/share/doc/r-cran-janeaustenr/copyright "$DEST.tmp/" 2>/dev/null || true
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
echo "fetch-austen: $(ls "$DEST" | tr '\n' ' ')-> $DEST" >&2
