#!/usr/bin/env bash
# Set up qwenhost in ./.venv from the project's own files: Python deps (llama-cpp-python is built from its
# sdist with the patches in scripts/llama-cpp-patches/, ~5-10 min on 2 cores, once per venv) and the model weights.
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
pip_q=(.venv/bin/pip --quiet --disable-pip-version-check)
# llama-cpp-python comes from its hash-pinned sdist, with qwenhost's patches to the llama.cpp it vendors
# (scripts/llama-cpp-patches/; why: docs/engine.md). The marker names the sdist and the patches it was built with,
# so a changed patch rebuilds it and an unchanged one is never rebuilt.
lcp_version=0.3.36
lcp_sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
# the patches apply, and are hashed, in byte order of their names (as the test computes it)
mapfile -t patches < <(printf '%s\n' scripts/llama-cpp-patches/*.patch | LC_ALL=C sort)
patches_id=$(cat "${patches[@]}" | sha256sum | cut -c1-16)
marker=".venv/llama-cpp-python-$lcp_version-$patches_id.built"
if [ ! -f "$marker" ]; then
  command -v patch >/dev/null || { echo "setup: the 'patch' program is required (Debian/Ubuntu: apt install patch)" >&2; exit 2; }
  echo "setup: building llama-cpp-python $lcp_version from source with qwenhost's patches (one time, several minutes)..." >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "llama-cpp-python==$lcp_version --hash=sha256:$lcp_sha256" > "$work/requirements.txt"
  # only llama-cpp-python as source: its build tools (scikit-build-core, cmake, ninja) may come as wheels
  "${pip_q[@]}" download --no-deps --no-binary llama-cpp-python --require-hashes -r "$work/requirements.txt" -d "$work"
  tar -xzf "$work/llama_cpp_python-$lcp_version.tar.gz" -C "$work"
  for p in "${patches[@]}"; do
    # no fuzz, no questions: a patch that does not apply exactly stops setup
    patch --quiet --batch --forward --fuzz=0 -p1 -d "$work/llama_cpp_python-$lcp_version" < "$p" \
      || { echo "setup: $p does not apply to llama-cpp-python $lcp_version" >&2; exit 1; }
  done
  # --no-cache-dir: a wheel built from a temporary directory would be cached under a key never seen again
  "${pip_q[@]}" install --no-cache-dir --force-reinstall --no-deps "$work/llama_cpp_python-$lcp_version"
  rm -f .venv/llama-cpp-python-*.built
  touch "$marker"
fi
"${pip_q[@]}" install -e ".${extras}"
case "$mode" in
  test) .venv/bin/qwenhost models pull qwen2.5-coder:0.5b ;;
  serve) .venv/bin/qwenhost models pull qwen2.5-coder:1.5b ;;
esac
