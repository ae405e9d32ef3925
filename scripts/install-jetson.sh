#!/usr/bin/env bash
# Install edgedfl on an NVIDIA Jetson (JetPack 6 / L4T) next to JetPack's own torch.
#
# The rule: torch is NVIDIA's wheel, already installed, and nothing here may
# replace it. edgedfl itself goes in with --no-deps; its other requirements go
# in with a constraints file that pins torch to the installed version, so pip
# fails rather than pull a second (CPU-only, x86-tuned or CUDA-mismatched) torch.
# See docs/jetson.md.
#
# usage: scripts/install-jetson.sh [--python PY] [--wheels DIR] [--bnb MODE] [--no-apt]
#                                  [--extras onnx,android] [--broker URL]
#   --python PY    the interpreter that holds JetPack's torch (default: python3)
#   --wheels DIR   air-gapped board: install exactly the wheels in DIR (--no-index,
#                  --no-deps) instead of resolving edgedfl's requirements online
#   --bnb MODE     bitsandbytes: source (build for this GPU's compute capability; the
#                  default on a Jetson: PyPI's aarch64 wheels are built for server ARM,
#                  not L4T), pypi (default elsewhere), index=URL (a prebuilt Jetson
#                  index, e.g. Jetson AI Lab's), none
#   --no-apt       do not apt-get install mosquitto
#   --extras LIST  also install these extras' packages (onnx, android, plots)
#   --broker URL   let `edgedfl doctor` also check this broker (mqtt://host:port)
#   --allow-cpu    go on without a CUDA torch (a CPU-only board; the laptop profile)
set -euo pipefail

PYTHON=python3
WHEELS=""
BNB=""
APT=1
EXTRAS=""
BROKER=""
ALLOW_CPU=0
BNB_VERSION=0.50.2

die() { echo "install-jetson: $*" >&2; exit 1; }
say() { echo "install-jetson: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --python) PYTHON="$2"; shift 2 ;;
        --wheels) WHEELS="$(cd "$2" && pwd)"; shift 2 ;;
        --bnb) BNB="$2"; shift 2 ;;
        --no-apt) APT=0; shift ;;
        --extras) EXTRAS="$2"; shift 2 ;;
        --broker) BROKER="$2"; shift 2 ;;
        --allow-cpu) ALLOW_CPU=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

cd "$(dirname "$0")/.."
[ -f pyproject.toml ] && grep -q '^name = "edgedfl"' pyproject.toml || die "run me from an edgedfl checkout"
JETSON=0
if [ -e /etc/nv_tegra_release ] || uname -r | grep -q tegra; then JETSON=1; fi

# 1. JetPack's torch must be there, and see the GPU ---------------------------------------
if ! probe=$("$PYTHON" -c 'import torch; print(torch.__version__, torch.cuda.is_available())' 2>/dev/null); then
    die "$PYTHON cannot import torch. Install NVIDIA's torch wheel for your JetPack first
  (docs/jetson.md, 'torch from JetPack'); this script never installs torch."
fi
read -r TORCH_VERSION TORCH_CUDA <<<"$probe"
say "torch $TORCH_VERSION, CUDA available: $TORCH_CUDA"
if [ "$TORCH_CUDA" != "True" ]; then
    [ "$ALLOW_CPU" = 1 ] || die "torch $TORCH_VERSION sees no CUDA device. On a Jetson this is a CPU-only torch
  (often one that pip pulled from PyPI): uninstall it and install NVIDIA's JetPack wheel.
  Pass --allow-cpu to install for CPU-only use anyway."
fi
[ "$JETSON" = 1 ] || say "not a Jetson (no /etc/nv_tegra_release): using this machine's torch the same way"

PIP=("$PYTHON" -m pip)
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
CONSTRAINTS="$WORK/constraints.txt"
# Pin torch (and its companions, if present) to exactly what is installed.
"$PYTHON" - "$CONSTRAINTS" <<'EOF'
import sys
from importlib import metadata

pins = []
for name in ("torch", "torchvision", "torchaudio"):
    try:
        pins.append(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
open(sys.argv[1], "w").write("\n".join(pins) + "\n")
EOF
say "constraints: $(tr '\n' ' ' <"$CONSTRAINTS")"

# edgedfl's requirements from pyproject.toml, torch left out (Python 3.10 has no tomllib: a plain parse)
requirements() {
    "$PYTHON" - "$@" <<'EOF'
import re
import sys

text = open("pyproject.toml").read()
blocks = {"": re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)}
for extra in sys.argv[1:]:
    m = re.search(rf"^{re.escape(extra)} = \[(.*?)\]", text, re.M)
    if m is None:
        sys.exit(f"unknown extra {extra!r}")
    blocks[extra] = m.group(1)
for block in blocks.values():
    for req in re.findall(r'"([^"]+)"', block):
        if re.split(r"[<>=!~ \[]", req, maxsplit=1)[0].lower() not in ("torch", "torchvision", "torchaudio"):
            print(req)
EOF
}

# 2. edgedfl itself, without its dependencies ------------------------------------------------
# --no-build-isolation: the build uses the setuptools already here instead of fetching one.
"${PIP[@]}" install --no-deps --no-build-isolation -e . || die "installing edgedfl failed"

# 3. everything else, never torch -------------------------------------------------------------
IFS=',' read -r -a EXTRA_LIST <<<"$EXTRAS"
if [ -n "$WHEELS" ]; then
    say "installing the wheels in $WHEELS as they are (no index, no dependency resolution)"
    "${PIP[@]}" install --no-index --no-deps "$WHEELS"/*.whl
else
    mapfile -t REQS < <(requirements "${EXTRA_LIST[@]}")
    say "installing: ${REQS[*]}"
    "${PIP[@]}" install -c "$CONSTRAINTS" "${REQS[@]}"
fi

# 4. bitsandbytes (the CUDA quantization backend of the jetson profile) ----------------------------
if [ -z "$BNB" ]; then
    if [ -n "$WHEELS" ]; then BNB=none; elif [ "$JETSON" = 1 ]; then BNB=source; else BNB=pypi; fi
fi
case "$BNB" in
    none) say "bitsandbytes: left as it is" ;;
    pypi) "${PIP[@]}" install -c "$CONSTRAINTS" "bitsandbytes==$BNB_VERSION" ;;
    index=*) "${PIP[@]}" install -c "$CONSTRAINTS" --extra-index-url "${BNB#index=}" "bitsandbytes==$BNB_VERSION" ;;
    source)
        command -v cmake >/dev/null && command -v git >/dev/null || die "building bitsandbytes needs git and cmake
  (sudo apt-get install -y git cmake build-essential), or pass --bnb none / --bnb index=URL"
        CC=$("$PYTHON" -c 'import torch; m, n = torch.cuda.get_device_capability(); print(f"{m}{n}")')
        say "building bitsandbytes $BNB_VERSION for compute capability $CC (several minutes on a Jetson)"
        git clone --quiet --depth 1 --branch "$BNB_VERSION" https://github.com/bitsandbytes-foundation/bitsandbytes "$WORK/bnb"
        # 8 GB boards run out of memory with more parallel compile jobs
        JOBS=$(nproc); [ "$JOBS" -gt 4 ] && JOBS=4
        (cd "$WORK/bnb" && cmake -DCOMPUTE_BACKEND=cuda -DCOMPUTE_CAPABILITY="$CC" -S . >/dev/null && make -j"$JOBS")
        "${PIP[@]}" install --no-deps --no-build-isolation "$WORK/bnb"
        ;;
    *) die "--bnb $BNB: use source, pypi, index=URL or none" ;;
esac

# 5. the torch we started with is still the torch --------------------------------------------------
AFTER=$("$PYTHON" -c 'import torch; print(torch.__version__, torch.cuda.is_available())')
[ "$AFTER" = "$TORCH_VERSION $TORCH_CUDA" ] || die "torch changed from '$TORCH_VERSION $TORCH_CUDA' to '$AFTER': \
something pulled a second torch; reinstall JetPack's wheel"
say "torch untouched: $AFTER"

# 6. Mosquitto, the swarm's broker --------------------------------------------------------------------
if [ "$APT" = 1 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get install -y mosquitto mosquitto-clients
fi

# 7. what this board can do ------------------------------------------------------------------------------
say "edgedfl doctor:"
DOCTOR=("$PYTHON" -m edgedfl.cli doctor)
[ -n "$BROKER" ] && DOCTOR+=(--broker "$BROKER")
"${DOCTOR[@]}"
