#!/usr/bin/env bash
# Runs `ansible-test sanity` with the ansible-core of the given virtualenv on a staged copy of the
# collection: ansible-test insists on an .../ansible_collections/<ns>/<name>/ path (a symlink is
# resolved and refused), so the tracked and not-ignored files are copied there first.
# Usage: tools/sanity.sh VENV_DIR [ansible-test sanity options...]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(cd "$1" && pwd); shift
python="$venv/bin/python"
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# A private staging dir per run, so that concurrent runs (two cores, several venvs) never collide.
work=$(mktemp -d "${TMPDIR:-/tmp}/storage-replication-sanity.XXXXXX")
trap 'rm -rf "$work"' EXIT
stage="$work/ansible_collections/storage/replication"
mkdir -p "$stage"
git ls-files --cached --others --exclude-standard -z | xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' \
    | tar --null -T - -cf - | tar -xf - -C "$stage"
cd "$stage"
"$venv/bin/ansible-test" sanity --venv --python "$version" --color no "$@"
