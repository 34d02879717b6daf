#!/usr/bin/env bash
# Prints the path of a Python >= 3.12 interpreter (needed by ansible-core 2.21), or fails.
for c in python3.13 python3.12 "$HOME"/.pyenv/versions/3.13*/bin/python3 "$HOME"/.pyenv/versions/3.12*/bin/python3; do
    p=$(command -v "$c" 2>/dev/null) || continue
    "$p" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null && { echo "$p"; exit 0; }
done
exit 1
