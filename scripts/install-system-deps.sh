#!/usr/bin/env bash
# Install the system packages the fleet needs on this machine, only those that are missing:
# redis-server (queue, demo, tests); with --test also openssh-server, supervisor and iproute2 (lab hosts
# for the Ansible tests) and prometheus (for promtool, which checks the alert rules). Those are optional:
# without root or sudo the tests that need them skip, saying why. Debian/Ubuntu (apt-get) only.
set -euo pipefail

required=()
optional=()
command -v redis-server >/dev/null 2>&1 || required+=(redis-server)
if [[ "${1:-}" == "--test" ]]; then
  command -v sshd >/dev/null 2>&1 || [[ -x /usr/sbin/sshd ]] || optional+=(openssh-server)
  command -v ssh >/dev/null 2>&1 || optional+=(openssh-client)
  command -v supervisord >/dev/null 2>&1 || optional+=(supervisor)
  command -v ip >/dev/null 2>&1 || [[ -x /usr/sbin/ip ]] || optional+=(iproute2)
  command -v promtool >/dev/null 2>&1 || optional+=(prometheus)
  # Lab hosts install releases into venvs of the system Python and build the wheelhouse with its pip.
  /usr/bin/python3 -c "import ensurepip, venv" >/dev/null 2>&1 || optional+=(python3-venv)
  /usr/bin/python3 -m pip --version >/dev/null 2>&1 || optional+=(python3-pip)
fi
want=("${required[@]}" "${optional[@]}")
[[ ${#want[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  if [[ ${#required[@]} -gt 0 ]]; then
    echo "missing system packages: ${required[*]}; install them as root: apt-get install ${required[*]}" >&2
    exit 1
  fi
  echo "note: not installing ${optional[*]} (needs root); the tests that need them will skip" >&2
  exit 0
fi
echo "installing system packages: ${want[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
# Debian starts the packaged services; the fleet runs its own private instances instead.
for svc in redis-server supervisor ssh prometheus; do
  if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    "${sudo[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
  else
    "${sudo[@]}" service "$svc" stop >/dev/null 2>&1 || true
  fi
done
