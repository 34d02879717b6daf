#!/usr/bin/env bash
# ansible-test sanity --venv bootstraps pip with get-pip scripts it downloads; offline, it looks
# for them in its cache first. This stand-in installs pip from the venv's own ensurepip instead.
set -euo pipefail
cache="$HOME/.ansible/test/cache"
mkdir -p "$cache"
for ver in 24_2 25_2; do
    cat > "$cache/get_pip_$ver.py" <<'PY'
import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
# ensurepip points PIP_CONFIG_FILE at /dev/null; drop it so pip reads the machine's pip.conf.
os.environ.pop("PIP_CONFIG_FILE", None)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
if args:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check"] + args)
PY
done
