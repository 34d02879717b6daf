#!/usr/bin/env bash
# Installs everything the demo, the tests and the benchmarks need: Debian packages, the pinned
# controller virtualenv(s), and the collection made importable. Safe to run again: each step
# checks first and does nothing when it is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

apt_packages=(zfs-fuse openssh-server openssh-client iproute2 procps psmisc util-linux
              python3 python3-venv systemd coreutils e2fsprogs
              qemu-system-x86 debootstrap   # the OpenZFS tier's guests (openzfs/)
              chromium                      # the web pages' tests (a real browser, headless)
              prometheus prometheus-node-exporter)  # the alert rules' and the dashboard's tests (promtool, live)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps the packages' services (sshd, zfs-fuse) from starting on the host:
    # the lab starts its own, one per node.
    had_policy=0; [ -e /usr/sbin/policy-rc.d ] && had_policy=1
    [ $had_policy = 1 ] || printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -qq "${missing[@]}" >/dev/null
    [ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d
fi

# make_venv DIR PYTHON REQUIREMENTS... : (re)creates DIR only when the pinned requirements changed.
make_venv() {
    local dir=$1 python=$2; shift 2
    local want; want=$(cat "$@" | sha256sum | cut -d' ' -f1)
    if [ -f "$dir/.requirements.sha256" ] && [ "$(cat "$dir/.requirements.sha256")" = "$want" ]; then
        return 0
    fi
    echo "bootstrap: creating $dir with $("$python" --version 2>&1)"
    rm -rf "$dir"
    "$python" -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check $(printf -- '-r %s ' "$@")
    echo "$want" > "$dir/.requirements.sha256"
}

make_venv .venv "$(command -v python3)" requirements/controller.txt requirements/test.txt

# ansible-core 2.21 needs Python >= 3.12 on the controller; use one if the machine has it.
py312=$(tools/find-python312.sh || true)
if [ -n "$py312" ]; then
    make_venv .venv-2.21 "$py312" requirements/controller-2.21.txt
fi

# The collection, importable by Python and found by Ansible, without copying it.
mkdir -p build/collections/ansible_collections/storage
ln -sfn "$root" build/collections/ansible_collections/storage/replication

# ansible-test sanity --venv downloads get-pip, which this network cannot reach; it accepts a
# local stand-in in its cache, which bootstraps pip from the interpreter's own ensurepip.
tools/install-get-pip-standin.sh
