#!/usr/bin/env bash
# Set up qwenhost in ./.venv from the project's own files: Python deps (llama-cpp-python is built from
# source, ~5-10 min on 2 cores the first time; pip caches the wheel after that) and the model weights.
#   scripts/setup.sh          -> installs, then fetches the default model (qwen2.5-coder:1.5b)
#   scripts/setup.sh test     -> installs with test extras, then fetches the small test model
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-serve}"
case "$mode" in
  serve|test) ;;
  *) echo "setup: unknown mode '$mode' (use: serve | test)" >&2; exit 2 ;;
esac
py="${PYTHON:-}"
if [ -z "$py" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      py="$cand"; break
    fi
  done
fi
[ -n "$py" ] || { echo "setup: Python >= 3.11 is required" >&2; exit 2; }
[ -x .venv/bin/python ] || "$py" -m venv .venv
# mtmd (the multimodal tool library) is not used by qwenhost; skipping it shortens the build.
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}"
extras=""
[ "$mode" = "test" ] && extras="[test]"
if ! .venv/bin/python -c 'import llama_cpp' 2>/dev/null; then
  echo "setup: building llama-cpp-python from source (one time, several minutes)..." >&2
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e ".${extras}"
case "$mode" in
  test) .venv/bin/qwenhost models pull qwen2.5-coder:0.5b ;;
  serve) .venv/bin/qwenhost models pull qwen2.5-coder:1.5b ;;
esac
