"""Re-execute notebooks in place so their saved outputs (figures, printed figures of merit) are current.

The docs are rendered from these saved outputs. Usage: .venv/bin/python tools/refresh_outputs.py [nbs/NAME.ipynb ...]
(default: every numbered notebook). Runs each with its default parameters in the Jupyter kernel the notebook declares
(`dti_lens`, registered by tools/setup.sh), which must be this interpreter's environment, then nbdev-cleans the
notebooks it ran (and only those).
"""
import argparse, subprocess, sys, time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient

root = Path(__file__).resolve().parent.parent


def kernel_for(nb, path) -> str:
    "The kernel `nb` declares, checked to run this interpreter's environment (so outputs come from this checkout)."
    name = nb.metadata.get("kernelspec", {}).get("name")
    if not name: sys.exit(f"{path}: the notebook declares no kernelspec")
    try: argv = KernelSpecManager().get_kernel_spec(name).argv
    except NoSuchKernel:
        sys.exit(f"{path}: no Jupyter kernel named {name!r}; `bash tools/setup.sh` registers it "
                 f"(or: {sys.executable} -m ipykernel install --user --name {name})")
    ask = [argv[0], "-c", "import sys; print(sys.prefix)"]
    prefix = subprocess.run(ask, capture_output=True, text=True).stdout.strip()
    if Path(prefix).resolve() != Path(sys.prefix).resolve():
        sys.exit(f"{path}: kernel {name!r} runs {argv[0]} (environment {prefix or '?'}), not this environment "
                 f"({sys.prefix}); run `bash tools/setup.sh` in this checkout to register it here")
    return name


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="notebooks to refresh (default: every nbs/[0-9]*.ipynb)")
    paths = ap.parse_args().notebooks or sorted((root / "nbs").glob("[0-9]*.ipynb"))
    for path in paths:
        t0 = time.perf_counter()
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, kernel_name=kernel_for(nb, path), timeout=1800,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        nbformat.write(nb, path)
        subprocess.run([str(Path(sys.executable).parent / "nbdev-clean"), "--fname", str(path)], cwd=root, check=True)
        print(f"{path.name}: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__": main()
