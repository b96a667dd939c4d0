#!/usr/bin/env bash
# Run the test suite in the project virtualenv, creating it when missing.
# Arguments go to pytest, as in ./run_tests.sh -m unit, and without them every
# tier runs. pytest exits 5 when it collects no tests, and this script fails then.
set -euo pipefail
cd "$(dirname "$0")"

VENV_DIR=${VENV_DIR:-.venv}
PYTHON=$VENV_DIR/bin/python
STAMP=$VENV_DIR/.requirements-dev.sha256

if [[ ! -x $PYTHON ]]; then
  echo "Creating the virtualenv $VENV_DIR"
  python3 -m venv "$VENV_DIR"
fi
# requirements-dev.txt includes requirements.txt, so the stamp covers both.
digest=$(sha256sum requirements.txt requirements-dev.txt)
if [[ $(cat "$STAMP" 2>/dev/null) != "$digest" ]]; then
  echo "Installing requirements-dev.txt into $VENV_DIR"
  "$PYTHON" -m pip install --disable-pip-version-check -r requirements-dev.txt
  echo "$digest" >"$STAMP"
fi

status=0
"$PYTHON" -m pytest "$@" || status=$?
if ((status == 5)); then
  echo "run_tests.sh: pytest collected no tests for: ${*:-every tier}" >&2
fi
exit "$status"
