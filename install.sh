#!/usr/bin/env bash
# Sets up certify in ./.venv (or in the active Python with --here).
#   ./install.sh          runtime install
#   ./install.sh --test   runtime + test tools
#   ./install.sh --fuzz   runtime + atheris, for benchmarks/fuzz.py (combines with --test)
# auto-LiRPA 0.3 (the only release on the package index) declares torch<1.13 and
# onnx2torch declares torchvision; both are installed with --no-deps so that pip never
# replaces the installed torch. Their real runtime needs are in setup.cfg.
set -euo pipefail
cd "$(dirname "$0")"
extras=()
here=0
for arg in "$@"; do
  case "$arg" in
    --test) extras+=(test) ;;
    --fuzz) extras+=(fuzz) ;;
    --here) here=1 ;;
    *) echo "install.sh: unknown option $arg (use --test, --fuzz, --here)" >&2; exit 2 ;;
  esac
done
if [ "$here" = 1 ]; then
  py=python3
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  py=.venv/bin/python
fi
pip=("$py" -m pip install -q --disable-pip-version-check)
# Keep a torch that is already there (2.11-2.14, e.g. a CUDA build on a GPU machine);
# otherwise take the CPU build of 2.13.0.
if ! "$py" -c 'import torch, sys; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(not (2, 11) <= v <= (2, 14))' 2>/dev/null; then
  "${pip[@]}" torch==2.13.0
fi
if [ ${#extras[@]} -gt 0 ]; then
  spec=".[$(IFS=,; echo "${extras[*]}")]"
else
  spec="."
fi
"${pip[@]}" -e "$spec"
"${pip[@]}" --no-deps auto-LiRPA==0.3 onnx2torch==1.5.15
echo "certify installed in $("$py" -c 'import sys; print(sys.prefix)')"
