#!/usr/bin/env bash
# The demo of the main job (README: `make demo`, which installs everything first).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python script/demo.py
