#!/usr/bin/env bash
# Every test: notebooks and library in sync, nbdev-test, then pytest (which runs the papermill notebooks).
# Extra arguments go to pytest, e.g. `bash tools/test.sh -k sphere`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

snapshot() { find nbs dti_lens -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' -print0 | sort -z | xargs -0 sha256sum; }
before=$(snapshot)
nbdev-export
nbdev-clean
after=$(snapshot)
if [ "$before" != "$after" ]; then
  echo "FAIL: nbdev-export / nbdev-clean changed these files: notebooks and library are out of sync." >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  echo "Run nbdev-export && nbdev-clean, review, and commit both sides." >&2
  exit 1
fi
echo "notebooks and library in sync"

nbdev-test --n-workers 2
python -m pytest "$@"
