#!/usr/bin/env bash
# Wheels for running bench/gpu_check.py on a GPU host that has Python 3.12, torch, torchaudio,
# transformers, sentencepiece, einops and PyYAML but not audiocraft and no network (the lent
# device image): audiocraft without its dependencies and the small packages our model path
# imports (~3 MB). Modules audiocraft imports but our path never calls (xformers, spacy, av,
# librosa, dora) are shimmed by the check itself, never by the product.
#
#   bash bench/gpu_wheelhouse.sh .whl        # here, with network
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl   # there
set -euo pipefail
out=${1:-.whl}
py=${PYTHON:-python3}
mkdir -p "$out"
platform=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# Versions from requirements/lock.txt (what CI runs).
"$py" -m pip download -q --no-deps --only-binary=:all: "${platform[@]}" -d "$out" \
    omegaconf==2.4.0 julius==0.2.8 num2words==0.5.14 colorlog==6.12.0 \
    soundfile==0.14.0 cffi==2.1.1 pycparser==3.12
# Published as source only: built here into pure-Python wheels.
"$py" -m pip wheel -q --no-deps -w "$out" audiocraft==1.3.0 flashy==0.0.2 docopt==0.6.2
ls "$out"
du -sh "$out"
