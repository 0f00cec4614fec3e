#!/usr/bin/env bash
# A release install as roles/release does it (a fresh venv --without-pip, then pip --python VENV install --no-index
# from the wheelhouse), the worker release (no extra) beside the controller's ([controller]), alternating, three rounds.
set -euo pipefail
WH=${1:-/var/cache/captcha-fleet/wheelhouse}  # the wheelhouse the roles build (argument: another)
V=$(ls $WH/captcha_fleet-*.whl | head -1 | sed 's/.*captcha_fleet-\([^-]*\)-.*/\1/')
for round in 1 2 3; do
  for spec in "captcha-fleet==$V" "captcha-fleet[controller]==$V"; do
    d=$(mktemp -d)
    s=$(date +%s.%N)
    python3 -m venv --without-pip $d/venv
    python3 -m pip --python $d/venv/bin/python install --quiet --disable-pip-version-check --no-index --find-links $WH "$spec" 2>/dev/null
    e=$(date +%s.%N)
    echo "$round $spec $(echo "$e - $s" | bc) s $(du -sm $d/venv | cut -f1) MB $(find $d/venv -type f | wc -l) files"
    rm -rf $d
  done
done
