#!/usr/bin/env bash
# The suite in two streams at once: the lab tests (they share one lab: namespace names, subnet, base directory,
# so they run one after another in one pytest) and the rest spread over pytest-xdist workers (mostly waiting on
# I/O). Extra arguments go to both runs. The lab run's output follows the other's; the exit code fails if either did.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTEST=${PYTEST:-.venv/bin/pytest}
WORKERS=${TEST_WORKERS:-3}
lab_log=$(mktemp)
trap 'rm -f "$lab_log"' EXIT
"$PYTEST" -m lab "$@" >"$lab_log" 2>&1 &
lab_pid=$!
"$PYTEST" -m "not lab" -n "$WORKERS" "$@"
rest=$?
wait "$lab_pid"
lab=$?
echo "---------------- lab tests (run alongside the rest) ----------------"
cat "$lab_log"
# pytest exits 5 when a selection holds no test: not a failure of the suite.
[[ $rest -eq 5 ]] && rest=0
[[ $lab -eq 5 ]] && lab=0
exit $(( rest != 0 || lab != 0 ))
