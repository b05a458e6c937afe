#!/usr/bin/env bash
# Idempotent environment setup for mvit_det.
#
# Creates a Python 3.10 virtualenv in .venv (or uses the interpreter named by MVIT_DET_PYTHON,
# e.g. a user's own environment with detectron2 built from source), installs the pinned
# dependencies from tools/requirements.txt, installs detectron2 only when it is not already
# importable (sal-detectron2==0.7.2, a CPython 3.10 wheel of upstream detectron2), and installs
# mvit_det in editable mode. A second run with unchanged inputs does nothing expensive.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MVIT_DET_VENV:-$ROOT/.venv}"
REQS="$ROOT/tools/requirements.txt"
D2_WHEEL_SPEC="sal-detectron2==0.7.2"

die() {
  echo "mvit_det setup: ERROR: $*" >&2
  exit 1
}

find_python310() {
  local cand
  for cand in python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
      command -v "$cand"
      return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    for cand in "$(pyenv root)"/versions/3.10.*/bin/python3.10; do
      if [ -x "$cand" ]; then
        echo "$cand"
        return 0
      fi
    done
  fi
  return 1
}

if [ -n "${MVIT_DET_PYTHON:-}" ]; then
  PY="$MVIT_DET_PYTHON"
  "$PY" -c 'import sys' 2>/dev/null || die "MVIT_DET_PYTHON=$PY is not a working Python interpreter."
else
  PY="$VENV/bin/python"
  if [ ! -x "$PY" ]; then
    BASE_PY="$(find_python310)" || die "python3.10 was not found. detectron2 from the package registry \
(sal-detectron2==0.7.2) is a CPython 3.10 wheel, so mvit_det's setup needs Python 3.10: install it \
(e.g. 'apt-get install python3.10 python3.10-venv', or 'pyenv install 3.10'), or point \
MVIT_DET_PYTHON at an interpreter that already has detectron2 installed."
    echo "mvit_det setup: creating virtualenv $VENV with $BASE_PY"
    "$BASE_PY" -m venv "$VENV" || die "could not create a virtualenv with $BASE_PY (on Debian/Ubuntu: \
apt-get install python3.10-venv)."
  fi
fi

# Stamp: hash of everything that decides the environment's contents.
STAMP_FILE="$("$PY" -c 'import sys; print(sys.prefix)')/.mvit_det_setup_stamp"
STAMP="$(cat "$REQS" "$ROOT/setup.py" "$0" | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$STAMP" ] \
  && "$PY" -c 'import detectron2, mvit_det, torch' >/dev/null 2>&1; then
  echo "mvit_det setup: environment is up to date ($PY)."
  exit 0
fi

pip_install() {
  "$PY" -m pip install --disable-pip-version-check "$@" || die "pip install $* failed. \
Check the network access to the package registry and the message above."
}

HAVE_TORCH=0
"$PY" -c 'import torch, torchvision' >/dev/null 2>&1 && HAVE_TORCH=1
HAVE_D2=0
"$PY" -c 'import detectron2' >/dev/null 2>&1 && HAVE_D2=1

if [ -n "${MVIT_DET_PYTHON:-}" ] && [ "$HAVE_TORCH" = 1 ]; then
  # A user's own environment: keep its torch/torchvision, install the rest.
  REQ_FILE="$(mktemp)"
  grep -vE '^(torch|torchvision)==' "$REQS" > "$REQ_FILE"
  pip_install -r "$REQ_FILE"
  rm -f "$REQ_FILE"
else
  pip_install -r "$REQS"
fi

if [ "$HAVE_D2" = 1 ]; then
  echo "mvit_det setup: detectron2 is already importable; keeping it."
else
  "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)' || die "detectron2 \
is not importable by $PY and the registry wheel $D2_WHEEL_SPEC needs CPython 3.10. Build detectron2 \
from source (https://detectron2.readthedocs.io/en/latest/tutorials/install.html) or use Python 3.10."
  pip_install "$D2_WHEEL_SPEC"
fi

pip_install --no-deps --no-build-isolation -e "$ROOT"
"$PY" -c 'import detectron2, mvit_det, torch; print("mvit_det setup: ok (torch", torch.__version__, \
"detectron2", detectron2.__version__, ")")' || die "the environment was installed but importing \
mvit_det failed (see the traceback above)."
echo "$STAMP" > "$STAMP_FILE"
