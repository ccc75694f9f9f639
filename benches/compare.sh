#!/usr/bin/env bash
# burn-moe vs PyTorch (CPU), back to back, same shapes and thread count; prints tokens/s and
# the ratio burn-moe / PyTorch per shape and pass.
#
#   bash benches/compare.sh                                   # the default shapes
#   SHAPES=512:64:2:8192:cap,512:64:2:8192:dropless bash benches/compare.sh
#   BACKENDS=ndarray,flex,wgpu THREADS=2 bash benches/compare.sh
#   REUSE_TORCH=1 FILTER=fwdbwd bash benches/compare.sh     # rerun one side only
#
# Needs PyTorch for Python 3 (BENCHMARKS.md says how to install the CPU wheel).
set -euo pipefail
cd "$(dirname "$0")/.."

# The 4 shapes of the pipeline issue, dropless and with capacity 1.25: 8 rows per pass.
SHAPES=${SHAPES:-256:16:2:8192:dropless,256:16:2:8192:cap,512:64:2:8192:dropless,512:64:2:8192:cap,256:16:2:2048:dropless,256:16:2:2048:cap,512:8:1:8192:dropless,512:8:1:8192:cap}
PYTHON=${PYTHON:-python3}
BACKENDS=${BACKENDS:-ndarray,flex}
THREADS=${THREADS:-$(nproc)}
OUT=${OUT:-target/compare}
# glibc mmaps every large buffer afresh and page-faults it in; `burn-moe` itself turns that off
# (src/main.rs). MALLOC=tuned (default) applies the same setting to both sides, MALLOC=default
# leaves glibc as it is, also for both sides.
if [ "${MALLOC:-tuned}" = tuned ]; then
    export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824
fi
mkdir -p "$OUT"

"$PYTHON" -c "import torch" 2>/dev/null || {
    echo "PyTorch is not installed: pip install torch --index-url https://download.pytorch.org/whl/cpu" >&2
    exit 1
}

echo "== burn-moe ($BACKENDS, $THREADS threads, malloc ${MALLOC:-tuned})" >&2
# Burn's CPU backends parallelise with rayon; PyTorch with its intra-op pool: same count.
RAYON_NUM_THREADS=$THREADS BURN_MOE_BENCH_SHAPES=$SHAPES BURN_MOE_BENCH_BACKENDS=$BACKENDS \
    cargo bench --bench moe_layer -- ${FILTER:-} >"$OUT/burn.log" 2>&1 || { tail -30 "$OUT/burn.log" >&2; exit 1; }

if [ -n "${REUSE_TORCH:-}" ] && [ -s "$OUT/torch.jsonl" ]; then
    echo "== PyTorch: reusing $OUT/torch.jsonl" >&2
else
    echo "== PyTorch ($THREADS threads)" >&2
    "$PYTHON" benches/pytorch_reference.py --check >&2
    "$PYTHON" benches/pytorch_reference.py --threads "$THREADS" --shapes "$SHAPES" >"$OUT/torch.jsonl"
fi

python3 - "$SHAPES" "$BACKENDS" "$OUT/torch.jsonl" <<'EOF'
import json, sys, pathlib
shapes, backends, torch_file = sys.argv[1].split(","), sys.argv[2].split(","), sys.argv[3]
torch = {}
for line in open(torch_file):
    r = json.loads(line)
    torch[(r["shape"], r["pass"], r["form"])] = r["tokens_per_s"]
def sid(s):
    d, m, k, n, mode = s.split(":")
    return f"d{d}-e{m}-k{k}-t{n}-{mode}", int(n)
def burn(pas, backend, shape):
    f = pathlib.Path("target/criterion") / f"{pas}_{backend}" / shape / "new" / "estimates.json"
    if not f.exists():
        return None
    return json.loads(f.read_text())["median"]["point_estimate"] / 1e9
head = f"{'pass':<7} {'shape':<28} {'param-loop':>11} {'grouped-mm':>11}"
for b in backends:
    head += f" {b:>10} {'ratio':>6}"
print(head + "    (tokens/s; ratio = burn-moe / best PyTorch)")
for pas in ("fwd", "fwdbwd"):
    for s in shapes:
        shape, tokens = sid(s)
        loop, grouped = torch.get((shape, pas, "param-loop")), torch.get((shape, pas, "grouped-mm"))
        best = max(v for v in (loop, grouped) if v)
        row = f"{pas:<7} {shape:<28} {loop or 0:>11.0f} {grouped or 0:>11.0f}"
        for b in backends:
            t = burn(pas, b, shape)
            row += f" {tokens / t:>10.0f} {tokens / t / best:>5.2f}x" if t else f" {'-':>10} {'-':>6}"
        print(row)
# The experts' FLOP rate inside the layer (fwd; the whole layer's time counted as expert time,
# so a lower bound) against two dense matmuls with the same FLOPs on the same backend.
print()
print(f"{'shape':<28}" + "".join(f" {b + ' layer':>14} {b + ' dense':>14} {'share':>6}" for b in backends)
      + "    (GFLOP/s of the experts' 6 d d_ff per assignment, fwd)")
for s in shapes:
    shape, tokens = sid(s)
    d, k = int(s.split(":")[0]), int(s.split(":")[2])
    flops = tokens * k * 6 * d * (2 * d)
    row = f"{shape:<28}"
    for b in backends:
        layer, dense = burn("fwd", b, shape), burn("matmul", b, shape)
        if layer and dense:
            row += f" {flops / layer / 1e9:>14.1f} {flops / dense / 1e9:>14.1f} {dense / layer:>5.0%}"
        else:
            row += f" {'-':>14} {'-':>14} {'-':>6}"
    print(row)
EOF
