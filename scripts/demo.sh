#!/usr/bin/env bash
# The demo of the main job: optimize a sample image into a local registry (see README).
set -euo pipefail
echo "demo: arrives with the optimize command (issue 5)" >&2
exit 1
