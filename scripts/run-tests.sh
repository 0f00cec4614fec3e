#!/usr/bin/env bash
# The suite in several streams at once: the lab tests in three pytests, each with a lab of its own (namespace
# names, subnet, base directory and wheelhouse), the lab modules split between them so that they take about as
# long; and the rest spread over pytest-xdist workers (mostly waiting on I/O). Extra arguments go to every run. The
# lab runs' output follows the other's; the exit code fails if any run did.
#
# TEST_LAB_RUNS=1 runs the lab tests in one pytest (one lab), TEST_LAB_RUNS=2 in two (group A apart).
# Three is the default: test_ansible_lab.py and the deployed fleet are each a chain of tests on one lab that
# takes 7.5-8.5 minutes beside the rest; with the other lab modules in a third run, the runs end about together
# (2026-12-02: make test 8 min 5 s with three runs, 10 min 7 s with two).
# Lab k is CAPTCHA_LAB_NAME / CAPTCHA_LAB_SUBNET for the first (default ctest, 10.77.9.0/24), CAPTCHA_LAB_NAME_k / CAPTCHA_LAB_SUBNET_k for
# the others (ctestp 10.77.19.0/24, ctestq 10.77.29.0/24).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTEST=${PYTEST:-.venv/bin/pytest}
WORKERS=${TEST_WORKERS:-3}
LAB_RUNS=${TEST_LAB_RUNS:-3}
# The groups, measured on 2 cores (seconds of the tests in the three-run make test, 2026-12-05):
# test_ansible_lab.py about 415 (group A); the deployed fleet about 385 and test_inventory_lab.py 60 (group B); the
# rest (the short game day with the role users' runs after it, test_ansible_roles_lab.py 110, labctl a few, a new
# module too) in the third run. The Sentinel set's role-user runs had a lab and a site.yml of their own (two minutes
# of the third run); they now follow the game day on its production-shaped lab.
# Modules by file name (in tests/lab/; the conftest there reads CAPTCHA_LAB_MODULES / CAPTCHA_LAB_SKIP_MODULES).
GROUP_A="test_ansible_lab.py"
GROUP_B="test_fleet_deployed_lab.py test_inventory_lab.py"
# The two long chains (groups A and B) set the suite's time: the shorter runs (the other lab modules, the rest)
# yield the cores to them (a lab run's niceness reaches its hosts' sshd, supervisord and workers).
LOW=${TEST_LOW_NICENESS:-5}

name_1=${CAPTCHA_LAB_NAME:-ctest}
subnet_1=${CAPTCHA_LAB_SUBNET:-10.77.9.0/24}
name_2=${CAPTCHA_LAB_NAME_2:-ctestp}
subnet_2=${CAPTCHA_LAB_SUBNET_2:-10.77.19.0/24}
name_3=${CAPTCHA_LAB_NAME_3:-ctestq}
subnet_3=${CAPTCHA_LAB_SUBNET_3:-10.77.29.0/24}
wheelhouse_1=${CAPTCHA_FLEET_WHEELHOUSE:-/var/cache/captcha-fleet/wheelhouse}
# The build script keeps one wheel per version in a wheelhouse: labs building releases at once (the same version
# from different sources, or the same wheel twice) must not share one. The dependencies' wheels are copied over
# so that the others need no index.
wheelhouse_2=${CAPTCHA_FLEET_WHEELHOUSE_2:-$wheelhouse_1-$name_2}
wheelhouse_3=${CAPTCHA_FLEET_WHEELHOUSE_3:-$wheelhouse_1-$name_3}

logs=()
tmps=()
rest_pid=
lab_pids=()
trap 'rm -f "${logs[@]}"; rm -rf "${tmps[@]}"' EXIT
# Every run is in the background (where a non-interactive shell ignores SIGINT): Ctrl-C or a TERM stops them all.
trap 'kill ${rest_pid:+"$rest_pid"} "${lab_pids[@]}" 2>/dev/null; exit 130' INT TERM

prebuild_wheelhouse() {  # the first wheelhouse, once, before the lab runs (seed_wheelhouse copies it)
  # Each lab's first release builds its wheelhouse: with none on the machine, three labs downloaded and built the
  # same dependency wheels at once (about 45 s of each run's first release on a fresh machine), and after a change
  # to the checkout each built the same project wheel. Best effort: a failed build here is tried again, and
  # reported, by the lab's own release step. /usr/bin/python3 is the release role's release_build_python: the
  # wheels must fit the lab hosts' interpreter.
  [[ $EUID -eq 0 && -x /usr/bin/python3 ]] || return 0
  /usr/bin/python3 roles/release/files/build_wheelhouse.py --source . --wheelhouse "$wheelhouse_1" >/dev/null ||
    echo "run-tests.sh: building $wheelhouse_1 failed; the lab runs build their own" >&2
}

seed_wheelhouse() {  # copy the first wheelhouse's wheels into another: dependencies, and a newer project wheel
  local target=$1 wheel stamp
  [[ -d $wheelhouse_1 ]] && mkdir -p "$target" 2>/dev/null || return 0
  for wheel in "$wheelhouse_1"/*.whl; do
    [[ -e $wheel ]] || continue
    stamp=$wheelhouse_1/.$(basename "$wheel").source  # the source hash the project wheel was built from
    if [[ -e $stamp ]]; then
      # the project's own wheel: copied with its stamp when the target's was built from another source (the
      # lab's build then finds it fresh when the lab's source is the checkout, and rebuilds it otherwise)
      cmp -s "$stamp" "$target/$(basename "$stamp")" || cp -f "$wheel" "$stamp" "$target/"
    else
      cp -n "$wheel" "$target/"
    fi
  done
}

start_lab_run() {  # niceness name subnet wheelhouse module-selection-variable modules [pytest args]
  local niceness=$1 name=$2 subnet=$3 wheelhouse=$4 select=$5 modules=$6 log tmpdir
  shift 6
  log=$(mktemp)
  logs+=("$log")
  # Each lab run's temporary files (its actuators' scratch inventories too) stay out of the others' /tmp.
  tmpdir=$(mktemp -d)
  tmps+=("$tmpdir")
  nice -n "$niceness" env CAPTCHA_LAB_NAME="$name" CAPTCHA_LAB_SUBNET="$subnet" CAPTCHA_FLEET_WHEELHOUSE="$wheelhouse" \
    TMPDIR="$tmpdir" ${select:+"$select=$modules"} "$PYTEST" -m lab --durations=15 "$@" >"$log" 2>&1 &
  lab_pids+=($!)
}

# The rest starts first: it needs no wheelhouse, and has the cores while the first one is built. The lab tests live
# in tests/lab/: the rest's workers do not even import them.
nice -n "$LOW" "$PYTEST" -m "not lab" --ignore=tests/lab -n "$WORKERS" "$@" &
rest_pid=$!

case $LAB_RUNS in
  1)
    start_lab_run 0 "$name_1" "$subnet_1" "$wheelhouse_1" "" "" "$@"
    ;;
  2)
    prebuild_wheelhouse
    seed_wheelhouse "$wheelhouse_2"
    start_lab_run 0 "$name_1" "$subnet_1" "$wheelhouse_1" CAPTCHA_LAB_SKIP_MODULES "$GROUP_A" "$@"
    start_lab_run 0 "$name_2" "$subnet_2" "$wheelhouse_2" CAPTCHA_LAB_MODULES "$GROUP_A" "$@"
    ;;
  *)
    prebuild_wheelhouse
    seed_wheelhouse "$wheelhouse_2"
    seed_wheelhouse "$wheelhouse_3"
    start_lab_run "$LOW" "$name_1" "$subnet_1" "$wheelhouse_1" CAPTCHA_LAB_SKIP_MODULES "$GROUP_A $GROUP_B" "$@"
    start_lab_run 0 "$name_2" "$subnet_2" "$wheelhouse_2" CAPTCHA_LAB_MODULES "$GROUP_A" "$@"
    start_lab_run 0 "$name_3" "$subnet_3" "$wheelhouse_3" CAPTCHA_LAB_MODULES "$GROUP_B" "$@"
    ;;
esac

wait "$rest_pid"
rest=$?
# pytest exits 5 when a selection holds no test: not a failure of the suite.
[[ $rest -eq 5 ]] && rest=0
failed=$(( rest != 0 ))
for i in "${!lab_pids[@]}"; do
  wait "${lab_pids[$i]}"
  code=$?
  echo "---------------- lab tests, run $(( i + 1 )) of ${#lab_pids[@]} (alongside the rest) ----------------"
  cat "${logs[$i]}"
  [[ $code -ne 0 && $code -ne 5 ]] && failed=1
done
exit "$failed"
