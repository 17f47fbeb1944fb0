#!/usr/bin/env bash
# One-command set-up: create .venv in the repo root, install dti_lens with its dev extras, run the demo.
#   TORCH_SPEC  the torch requirement installed first (default: torch==2.13.0). On a CPU-only machine
#               of this platform that is a local CPU wheel; on a Linux x86_64 GPU machine it is the
#               CUDA build. Set TORCH_SPEC=skip to keep a torch you installed into .venv yourself.
#   PYTHON      the interpreter used to create .venv (default: python3.11, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
[ "$TORCH_SPEC" = skip ] || .venv/bin/python -m pip install --quiet "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet -e ".[dev]"
# The notebooks declare the Jupyter kernel `dti_lens`. Registered for the user, any Jupyter (a system JupyterLab,
# VS Code) finds it and runs this .venv; registered inside .venv as well, the venv's own Jupyter, papermill and
# tools/refresh_outputs.py use that copy (a venv prefers its own kernels) even after another checkout's set-up
# re-registers the user's.
for where in --user --sys-prefix; do
  .venv/bin/python -m ipykernel install "$where" --name dti_lens --display-name "Python (dti_lens)" >/dev/null
done
.venv/bin/dti-lens demo
