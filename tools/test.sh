#!/usr/bin/env bash
# Every test: notebooks and library in sync, nbdev-test, then pytest (which runs the papermill notebooks).
# Extra arguments go to pytest, e.g. `bash tools/test.sh -k sphere`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

snapshot() {
  find nbs dti_lens -type f \( -name '*.ipynb' -o -name '*.py' -o -name '*.yml' \) -not -path '*/.ipynb_checkpoints/*' \
    -print0 | sort -z | xargs -0 sha256sum
}
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

# The docs' notebook processing (what `nbdev-docs` runs before Quarto): every notebook must pass, and it must leave
# the tree as committed (nbs/sidebar.yml in the form nbdev writes; its output goes to the ignored _proc/).
# --file-re is nbdev-docs' own default: without it nbdev-proc-nbs lists nbdev.yml and the like in the sidebar.
# nbdev-proc-nbs tries to install Quarto (sudo, download) when it is missing although it never calls it: a stub
# that only fails stands in for it. --force: every notebook, not only those changed since the last run.
quarto_stub=$(mktemp -d)
trap 'rm -rf "$quarto_stub"' EXIT
command -v quarto >/dev/null || { printf '#!/bin/sh\necho "quarto: a stub" >&2; exit 1\n' > "$quarto_stub/quarto"
                                  chmod +x "$quarto_stub/quarto"; }
before=$(snapshot)
if ! PATH="$quarto_stub:$PATH" nbdev-proc-nbs --force --n-workers 2 --file-re '\.(?:ipynb|qmd|html)$'; then
  echo "FAIL: nbdev-proc-nbs: the docs run a notebook's imports, exports and show_doc cells alone; the cell above" >&2
  echo "failed there. Put imports in cells of their own, apart from code that needs parameters or earlier cells." >&2
  exit 1
fi
after=$(snapshot)
if [ "$before" != "$after" ]; then
  echo "FAIL: the docs build (nbdev-proc-nbs) changed these files; commit them as nbdev writes them:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
echo "docs processing passed on every notebook"

nbdev-test --n-workers 2
python -m pytest "$@"
