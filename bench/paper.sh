#!/usr/bin/env bash
# The paper benchmark: edgedfl and the baselines on one emulated swarm of SmolLM2-135M devices.
# Writes bench/results/paper.md, paper.json and paper.png. Hours on a 2-core machine; see --quick.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/edgedfl bench paper "$@"
