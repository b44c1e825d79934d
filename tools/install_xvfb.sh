#!/usr/bin/env bash
# Installs Xvfb and the libraries headless Qt/GL needs, where that can be done: as root with apt.
# Elsewhere it says so and exits 0 (tests/conftest.py then skips the GUI tests with the reason).
set -euo pipefail
if command -v xvfb-run >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "no xvfb-run, and not root with apt-get: GUI tests will be skipped (install xvfb to run them)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq xvfb xauth libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
  libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libgl1 \
  libegl1 libxkbcommon-x11-0 libdbus-1-3 libfontconfig1 >/dev/null
