#!/bin/sh
# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Runs in the guest at boot, before sshd: gives this guest the identity the host chose for it.
# The image itself carries no host key and no authorized key: every node of a tier gets its own,
# handed over through QEMU's fw_cfg (opt/ozfs/<item>), so that the controller can pin each node's
# host key and no two nodes share one.
set -eu
FW=/sys/firmware/qemu_fw_cfg/by_name/opt/ozfs
modprobe qemu_fw_cfg
item() { cat "$FW/$1/raw"; }

name=$(item hostname)
hostname "$name"
echo "$name" > /etc/hostname
printf '127.0.0.1 localhost\n127.0.1.1 %s\n' "$name" > /etc/hosts

umask 077
item host_key > /etc/ssh/ssh_host_ed25519_key
ssh-keygen -y -f /etc/ssh/ssh_host_ed25519_key > /etc/ssh/ssh_host_ed25519_key.pub
mkdir -p /root/.ssh
item authorized_keys > /root/.ssh/authorized_keys

# The inter-node link (second NIC): a static address on the tier's private network.
umask 022
cat > /run/systemd/network/20-link.network <<NET
[Match]
MACAddress=$(item link_mac)
[Network]
Address=$(item link_address)
LinkLocalAddressing=no
[Link]
MTUBytes=9000
NET
