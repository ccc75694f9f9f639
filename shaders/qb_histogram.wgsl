// Quantile balancing, histogram estimator: counts[j][b] = number of tokens i whose value
// s_ij - a_i falls in bin b, bin(v) = clamp(floor((v - lo) * scale), 0, B - 1); one workgroup
// per expert, the bins in workgroup memory (B <= 4096 u32 = 16 KiB).

struct Params {
    tokens: u32,
    experts: u32,
}

// Every binding is read_write: Burn pools tensors in shared wgpu buffers, and wgpu refuses a
// buffer bound read-only and read-write in one dispatch.
@group(0) @binding(0) var<storage, read_write> scores: array<f32>;
@group(0) @binding(1) var<storage, read_write> cutoffs: array<f32>;
@group(0) @binding(2) var<storage, read_write> bounds: array<f32>; // lo, scale (bins per unit)
@group(0) @binding(3) var<storage, read_write> params: Params;
@group(0) @binding(4) var<storage, read_write> counts: array<i32>;

const THREADS: u32 = 256u;
const BINS: u32 = {{ bins }}u;
var<workgroup> bins: array<atomic<u32>, BINS>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = wid.x;
    let n = params.tokens;
    let m = params.experts;
    for (var b = lid; b < BINS; b += THREADS) {
        atomicStore(&bins[b], 0u);
    }
    workgroupBarrier();
    let lo = bounds[0];
    let scale = bounds[1];
    for (var i = lid; i < n; i += THREADS) {
        let x = floor((scores[i * m + j] - cutoffs[i] - lo) * scale);
        let b = u32(clamp(x, 0.0, f32(BINS - 1u)));
        atomicAdd(&bins[b], 1u);
    }
    workgroupBarrier();
    for (var b = lid; b < BINS; b += THREADS) {
        counts[j * BINS + b] = i32(atomicLoad(&bins[b]));
    }
}
