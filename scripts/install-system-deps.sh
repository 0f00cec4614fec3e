#!/usr/bin/env bash
# Install the system packages the fleet needs on this machine, only those that are missing:
# redis-server (queue, demo, tests); with --lab also openssh-server, supervisor and iproute2
# (lab hosts for the Ansible tests). Needs root (or sudo) only when something is missing.
set -euo pipefail

want=()
command -v redis-server >/dev/null 2>&1 || want+=(redis-server)
if [[ "${1:-}" == "--lab" ]]; then
  command -v sshd >/dev/null 2>&1 || [[ -x /usr/sbin/sshd ]] || want+=(openssh-server)
  command -v ssh >/dev/null 2>&1 || want+=(openssh-client)
  command -v supervisord >/dev/null 2>&1 || want+=(supervisor)
  command -v ip >/dev/null 2>&1 || [[ -x /usr/sbin/ip ]] || want+=(iproute2)
fi
[[ ${#want[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "missing system packages: ${want[*]}; install them as root (apt-get install ${want[*]})" >&2
  exit 1
fi
echo "installing system packages: ${want[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
# Debian starts the packaged services; the fleet runs its own private instances instead.
for svc in redis-server supervisor ssh; do
  if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    "${sudo[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
  else
    "${sudo[@]}" service "$svc" stop >/dev/null 2>&1 || true
  fi
done
