#!/usr/bin/env bash
# The project's set-up commands for a fresh Debian 12 machine (see README):
#   tools/dev.sh run [ledgerd flags...]   install packages, build Release, start ledgerd
#   tools/dev.sh test                      install packages, compile the Release binaries (the run
#                                          command's build), build Debug+ASan/UBSan, run ctest
#   tools/dev.sh bench [ledgerctl bench flags...]   Release build, append-path benchmark
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(build-essential cmake ninja-build ccache pkg-config git
  librocksdb-dev librdkafka-dev libcpp-httplib-dev rapidjson-dev libspdlog-dev libcli11-dev
  libssl-dev libgtest-dev libgmock-dev kcat wrk curl openssl
  python3)  # tools/bench/fsync_probe.py, the disk check README asks for before a tail figure

deps() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing: ${missing[*]}" >&2
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}"
  fi
}

jobs() { echo "${LEDGER_BUILD_JOBS:-2}"; }

build_release() {
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLEDGER_SANITIZE=OFF -DLEDGER_BUILD_TESTS=OFF
  cmake --build build -j"$(jobs)" --target ledgerd ledgerctl
}

case "${1:-}" in
  run)
    shift
    deps
    build_release
    exec build/bin/ledgerd "$@"
    ;;
  test)
    deps
    # What `run` builds must compile too: -O3 -Werror warns where Debug does not (GCC 12's
    # -Wmaybe-uninitialized). Its own directory, so that neither build reconfigures the other.
    cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release -DLEDGER_SANITIZE=OFF \
      -DLEDGER_BUILD_TESTS=OFF
    cmake --build build-release -j"$(jobs)" --target ledgerd ledgerctl
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Debug -DLEDGER_SANITIZE=ON -DLEDGER_BUILD_TESTS=ON
    cmake --build build -j"$(jobs)"
    cd build
    ctest --output-on-failure -j2 --timeout 900
    ;;
  bench)
    shift
    deps
    build_release
    exec build/bin/ledgerctl bench "$@"
    ;;
  *)
    echo "usage: tools/dev.sh run|test|bench [args...]" >&2
    exit 64
    ;;
esac
