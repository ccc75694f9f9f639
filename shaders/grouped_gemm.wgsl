// The grouped GEMM `out[r] = x[r] w[g]` for the rows `offsets[g] <= r < offsets[g + 1]` of each
// group; rows past the last group get zeros. With SWIGLU, the experts' gate and up projections
// and their SwiGLU in one pass: `out[r] = silu(x[r] w_gate[g]) * (x[r] w[g])`.
//
// `x [rows, K]`, `w`, `w_gate [groups, K, N]` contiguous, K and N multiples of 4 (the caller
// pads other sizes), read as vec4. One workgroup of 64 invocations per (tile of TM = 64 rows,
// 64 columns); each invocation computes an 8 x 8 block from registers: per 4 steps of K it loads
// 8 vec4 of `x` and 8 of `w` for 256 products. No workgroup memory, no barrier: on CPU
// implementations of WebGPU (lavapipe) every load is a gather and every barrier a context
// switch, and on GPUs the neighbouring invocations' loads coalesce. A row tile never spans two
// groups; the workgroup finds its group in the tile map (`group_tiles.wgsl`) by binary search.

struct Params {
    rows: u32,
    groups: u32,
}

const K: u32 = {{ k }}u;
const N: u32 = {{ n }}u;
const TM: u32 = {{ tile_rows }}u; // 64: 8 x 8 invocations of 8 x 8 outputs
const TN: u32 = 64u;
const SWIGLU: bool = {{ swiglu }};

@group(0) @binding(0) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> offsets: array<i32>;
@group(0) @binding(2) var<storage, read_write> w: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> w_gate: array<vec4<f32>>; // `w` again without SWIGLU
@group(0) @binding(4) var<storage, read_write> tile_start: array<u32>;
@group(0) @binding(5) var<storage, read_write> params: Params;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

/// `acc[r] += a[r] * b` for the eight rows of an invocation's block.
fn outer(acc: ptr<function, array<vec4<f32>, 8>>, a: array<f32, 8>, b: vec4<f32>) {
    (*acc)[0] += a[0] * b;
    (*acc)[1] += a[1] * b;
    (*acc)[2] += a[2] * b;
    (*acc)[3] += a[3] * b;
    (*acc)[4] += a[4] * b;
    (*acc)[5] += a[5] * b;
    (*acc)[6] += a[6] * b;
    (*acc)[7] += a[7] * b;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let groups = params.groups;
    let tile = wid.x;
    if tile >= tile_start[groups + 1u] {
        return;
    }
    // The largest g with tile_start[g] <= tile: g == groups is the rows past the last group.
    var g = 0u;
    var hi = groups;
    while g < hi {
        let mid = (g + hi + 1u) / 2u;
        if tile_start[mid] <= tile {
            g = mid;
        } else {
            hi = mid - 1u;
        }
    }
    let r0 = u32(offsets[g]) + (tile - tile_start[g]) * TM;
    var end = params.rows;
    if g < groups {
        end = u32(offsets[g + 1u]);
    }
    // Invocation `lid` computes an 8 x 8 block: rows `r0 + 8 (lid / 8)`, columns
    // `c0 + 8 (lid % 8)`; per 4 steps of K it loads 8 vec4 of `x` and 8 of `w` for 256 products.
    let rb = (lid / 8u) * 8u;
    let c0 = wid.y * TN + (lid % 8u) * 8u;
    var left: array<vec4<f32>, 8>;
    var right: array<vec4<f32>, 8>;
    var gate_left: array<vec4<f32>, 8>;
    var gate_right: array<vec4<f32>, 8>;
    if g < groups {
        // In vec4 units.
        let xs = K / 4u;
        let ws = N / 4u;
        var wi = g * K * ws + c0 / 4u;
        var xi = (r0 + rb) * xs;
        for (var kk = 0u; kk < K; kk += 4u) {
            let a0 = x[xi];
            let a1 = x[xi + 1u * xs];
            let a2 = x[xi + 2u * xs];
            let a3 = x[xi + 3u * xs];
            let a4 = x[xi + 4u * xs];
            let a5 = x[xi + 5u * xs];
            let a6 = x[xi + 6u * xs];
            let a7 = x[xi + 7u * xs];
            // The four steps of K: component j of the eight rows times row j of the weights.
            let s0 = array<f32, 8>(a0.x, a1.x, a2.x, a3.x, a4.x, a5.x, a6.x, a7.x);
            let s1 = array<f32, 8>(a0.y, a1.y, a2.y, a3.y, a4.y, a5.y, a6.y, a7.y);
            let s2 = array<f32, 8>(a0.z, a1.z, a2.z, a3.z, a4.z, a5.z, a6.z, a7.z);
            let s3 = array<f32, 8>(a0.w, a1.w, a2.w, a3.w, a4.w, a5.w, a6.w, a7.w);
            outer(&left, s0, w[wi]);
            outer(&right, s0, w[wi + 1u]);
            outer(&left, s1, w[wi + 1u * ws]);
            outer(&right, s1, w[wi + 1u * ws + 1u]);
            outer(&left, s2, w[wi + 2u * ws]);
            outer(&right, s2, w[wi + 2u * ws + 1u]);
            outer(&left, s3, w[wi + 3u * ws]);
            outer(&right, s3, w[wi + 3u * ws + 1u]);
            if SWIGLU {
                outer(&gate_left, s0, w_gate[wi]);
                outer(&gate_right, s0, w_gate[wi + 1u]);
                outer(&gate_left, s1, w_gate[wi + 1u * ws]);
                outer(&gate_right, s1, w_gate[wi + 1u * ws + 1u]);
                outer(&gate_left, s2, w_gate[wi + 2u * ws]);
                outer(&gate_right, s2, w_gate[wi + 2u * ws + 1u]);
                outer(&gate_left, s3, w_gate[wi + 3u * ws]);
                outer(&gate_right, s3, w_gate[wi + 3u * ws + 1u]);
            }
            wi += 4u * ws;
            xi += 1u;
        }
    }
    for (var i = 0u; i < 8u; i++) {
        let row = r0 + rb + i;
        if row < end && rb + i < TM {
            var vl = left[i];
            var vh = right[i];
            if SWIGLU {
                vl = gate_left[i] / (vec4<f32>(1.0) + exp(-gate_left[i])) * vl;
                vh = gate_right[i] / (vec4<f32>(1.0) + exp(-gate_right[i])) * vh;
            }
            for (var j = 0u; j < 4u; j++) {
                if c0 + j < N {
                    out[row * N + c0 + j] = vl[j];
                }
                if c0 + 4u + j < N {
                    out[row * N + c0 + 4u + j] = vh[j];
                }
            }
        }
    }
}
