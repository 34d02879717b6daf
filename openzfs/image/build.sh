#!/usr/bin/env bash
# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# The OpenZFS tier's guest image: Debian 12 with the OpenZFS kernel module built by zfs-dkms,
# Python for the engine's runner (pinned requirements/node.txt in /opt/storage-replication/venv)
# and the peer tools for the benchmark (syncoid from Debian, zfs_autobackup and bzfs from PyPI).
#
#   build.sh OUTDIR      writes OUTDIR/{disk.img,vmlinuz,initrd.img,zfs-version,timings.txt}
#
# Called by `python -m openzfs image` (which decides whether a rebuild is needed and renames the
# finished directory into the cache); run as root.  The host's apt configuration is never changed:
# the Debian mirror is read from it, and 'contrib' (zfs-dkms) is enabled inside the chroot only.
set -euo pipefail

OUT=${1:?usage: build.sh OUTDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SUITE=bookworm
IMG_SIZE=6G
ROOT=$OUT/root
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

[ "$(id -u)" = 0 ] || { echo "build.sh: must run as root" >&2; exit 1; }
mkdir -p "$OUT"

# ---------------------------------------------------------------- helpers
STEP=""; STEP_T0=0; T0=$(date +%s)
step() {   # step NAME: ends the previous step (its time goes to timings.txt), starts the next
    local now; now=$(date +%s)
    [ -z "$STEP" ] || printf '%-20s %4ss\n' "$STEP" "$((now - STEP_T0))" >> "$OUT/timings.txt"
    STEP=$1; STEP_T0=$now
    [ -z "$STEP" ] || echo "openzfs image: $STEP" >&2
}
logged() {   # logged LOGNAME CMD...: run quietly, show the log's tail if it fails
    "${@:2}" > "$OUT/$1.log" 2>&1 || { tail -40 "$OUT/$1.log" >&2; echo "build.sh: step '$STEP' failed (log: $OUT/$1.log)" >&2; return 1; }
}
MOUNTED=()
unmount_chroot() {
    local i
    for ((i=${#MOUNTED[@]}-1; i>=0; i--)); do umount "${MOUNTED[i]}" || umount -l "${MOUNTED[i]}"; done
    MOUNTED=()
}
trap unmount_chroot EXIT
mount_chroot() {
    local spec
    for spec in "proc proc" "sysfs sys" "devbind dev" "devbind dev/pts" "tmpfs run"; do
        set -- $spec
        if [ "$1" = devbind ]; then mount --bind "/$2" "$ROOT/$2"; else mount -t "$1" "$1" "$ROOT/$2"; fi
        MOUNTED+=("$ROOT/$2")
    done
}
in_chroot() {
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"
}
apt_in_chroot() { in_chroot apt-get install -y -qq --no-install-recommends "$@"; }

# The first Debian (and security) mirror of the host's apt sources, deb822 or one-line format.
host_mirrors() {
    { awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}' /etc/apt/sources.list.d/*.sources 2>/dev/null
      awk '/^deb / {print $2}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
    } | sed 's:/*$::'
}

# ---------------------------------------------------------------- host tools
step host-tools
missing=()
for p in debootstrap qemu-system-x86 e2fsprogs openssh-client; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    logged apt-host-update apt-get update -qq
    logged apt-host apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
MIRROR=$(host_mirrors | grep -v -- -security | grep -m1 '/debian$' || true)
SECURITY=$(host_mirrors | grep -m1 -- '/debian-security$' || true)
[ -n "$MIRROR" ] || { echo "build.sh: no Debian mirror in the host's apt sources" >&2; exit 1; }

# ---------------------------------------------------------------- base system
step debootstrap
rm -rf --one-file-system "$ROOT"
logged debootstrap debootstrap --variant=minbase --components=main,contrib --include=ca-certificates \
    "$SUITE" "$ROOT" "$MIRROR"

step base-packages
{
    echo "deb $MIRROR $SUITE main contrib"
    echo "deb $MIRROR $SUITE-updates main contrib"
    [ -z "$SECURITY" ] || echo "deb $SECURITY $SUITE-security main contrib"
} > "$ROOT/etc/apt/sources.list"
# The host's mirror may be a frozen snapshot whose Release files have expired.
printf 'Acquire::Check-Valid-Until "false";\nAPT::Install-Recommends "false";\nAcquire::Languages "none";\n' \
    > "$ROOT/etc/apt/apt.conf.d/90openzfs-tier"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"   # no daemon starts inside the chroot
chmod +x "$ROOT/usr/sbin/policy-rc.d"
mount_chroot
logged apt-update in_chroot apt-get update -qq
logged apt-base apt_in_chroot systemd-sysv udev kmod dbus iproute2 openssh-server python3 python3-venv python3-packaging procps

step kernel-and-zfs-tools
logged apt-kernel apt_in_chroot linux-image-amd64 linux-headers-amd64 dkms zfsutils-linux

step zfs-dkms
# zfs-dkms' postinst compiles the module for every installed kernel with headers: the long step.
logged apt-zfs-dkms apt_in_chroot zfs-dkms
KVER=$(ls "$ROOT/lib/modules" | sort -V | tail -1)
ls "$ROOT/lib/modules/$KVER"/updates/dkms/zfs.ko* > /dev/null \
    || { echo "build.sh: zfs.ko was not built for kernel $KVER (see $OUT/apt-zfs-dkms.log)" >&2; exit 1; }
in_chroot modinfo -k "$KVER" -F version zfs > "$OUT/zfs-version"

step peers-and-runner
# syncoid with what it uses when present (pv, mbuffer, lzop); the PyPI peers and the runner's venv.
logged apt-peers apt_in_chroot sanoid pv mbuffer lzop libcapture-tiny-perl libconfig-inifiles-perl
install -D -m 644 "$HERE/peers.txt" "$ROOT/opt/peers/requirements.txt"
install -D -m 644 "$REPO/requirements/node.txt" "$ROOT/opt/storage-replication/requirements.txt"
# The host downloads (its pip knows this machine's index and certificates); the guest installs offline.
# Same Python minor version on both sides (Debian 12: 3.11), so the host's wheels fit.
mkdir -p "$ROOT/var/tmp/wheels"
logged pip-download "${PYTHON:-python3}" -m pip download -q -d "$ROOT/var/tmp/wheels" \
    -r "$HERE/peers.txt" -r "$REPO/requirements/node.txt"
offline_install='python3 -m venv "$1" && "$1/bin/pip" install -q --no-index --find-links /var/tmp/wheels -r "$2"'
logged venv-peers in_chroot sh -c "$offline_install" sh /opt/peers/venv /opt/peers/requirements.txt
logged venv-runner in_chroot sh -c "$offline_install" sh /opt/storage-replication/venv /opt/storage-replication/requirements.txt
rm -rf "$ROOT/var/tmp/wheels"
for tool in zfs-autobackup bzfs; do ln -sf "/opt/peers/venv/bin/$tool" "$ROOT/usr/local/bin/$tool"; done

step configure
echo "/dev/vda / ext4 rw,relatime,errors=remount-ro 0 1" > "$ROOT/etc/fstab"
mkdir -p "$ROOT/etc/systemd/network"
printf '[Match]\nName=eth0\n[Network]\nDHCP=ipv4\n' > "$ROOT/etc/systemd/network/10-control.network"
install -m 755 "$HERE/guest-identity.sh" "$ROOT/usr/local/sbin/guest-identity"
cat > "$ROOT/etc/systemd/system/guest-identity.service" <<'EOF'
[Unit]
Description=Host key, name and link address handed over by the host (fw_cfg)
DefaultDependencies=no
After=local-fs.target
Before=ssh.service systemd-networkd.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/guest-identity
[Install]
WantedBy=multi-user.target
EOF
in_chroot systemctl enable systemd-networkd.service guest-identity.service > /dev/null 2>&1
# Pools are created fresh at every boot: nothing to import, mount or share, so none of the units that wait for
# udev to settle. The module is loaded by the first zfs command (or an explicit modprobe), not during boot.
in_chroot systemctl mask systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
    e2scrub_reap.service zfs-zed.service zfs-load-module.service zfs-import-cache.service zfs-mount.service \
    zfs-share.service zfs-volume-wait.service systemd-udev-settle.service > /dev/null 2>&1
mkdir -p "$ROOT/etc/ssh/sshd_config.d"
# ClientAlive: a session whose peer vanished (link down) ends within 30 s, as on production nodes, so that an
# interrupted `zfs recv` exits and leaves its resume token instead of waiting forever.
printf 'PermitRootLogin prohibit-password\nUseDNS no\nHostKey /etc/ssh/ssh_host_ed25519_key\nMaxStartups 50\nClientAliveInterval 10\nClientAliveCountMax 3\n' \
    > "$ROOT/etc/ssh/sshd_config.d/openzfs-tier.conf"
rm -f "$ROOT"/etc/ssh/ssh_host_*   # every node gets its own at boot (guest-identity)
in_chroot passwd -d root > /dev/null   # serial console login, for debugging only
mkdir -p "$ROOT/etc/systemd/system.conf.d"
printf '[Manager]\nDefaultTimeoutStopSec=10s\n' > "$ROOT/etc/systemd/system.conf.d/openzfs-tier.conf"
in_chroot zgenhostid -f
cp -L "$ROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
cp -L "$ROOT/boot/initrd.img-$KVER" "$OUT/initrd.img"

step image
in_chroot apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT/usr/sbin/policy-rc.d"
: > "$ROOT/etc/resolv.conf"
unmount_chroot
rm -f "$OUT/disk.img"
truncate -s "$IMG_SIZE" "$OUT/disk.img"
mkfs.ext4 -q -F -L openzfs-tier -d "$ROOT" "$OUT/disk.img"
rm -rf --one-file-system "$ROOT"

step ""
printf '%-20s %4ss\n' total "$(($(date +%s) - T0))" >> "$OUT/timings.txt"
cat "$OUT/timings.txt" >&2
