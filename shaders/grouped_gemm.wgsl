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
            let bl0 = w[wi];
            let bh0 = w[wi + 1u];
            left[0] += a0.x * bl0;
            left[1] += a1.x * bl0;
            left[2] += a2.x * bl0;
            left[3] += a3.x * bl0;
            left[4] += a4.x * bl0;
            left[5] += a5.x * bl0;
            left[6] += a6.x * bl0;
            left[7] += a7.x * bl0;
            right[0] += a0.x * bh0;
            right[1] += a1.x * bh0;
            right[2] += a2.x * bh0;
            right[3] += a3.x * bh0;
            right[4] += a4.x * bh0;
            right[5] += a5.x * bh0;
            right[6] += a6.x * bh0;
            right[7] += a7.x * bh0;
            let bl1 = w[wi + 1u * ws];
            let bh1 = w[wi + 1u * ws + 1u];
            left[0] += a0.y * bl1;
            left[1] += a1.y * bl1;
            left[2] += a2.y * bl1;
            left[3] += a3.y * bl1;
            left[4] += a4.y * bl1;
            left[5] += a5.y * bl1;
            left[6] += a6.y * bl1;
            left[7] += a7.y * bl1;
            right[0] += a0.y * bh1;
            right[1] += a1.y * bh1;
            right[2] += a2.y * bh1;
            right[3] += a3.y * bh1;
            right[4] += a4.y * bh1;
            right[5] += a5.y * bh1;
            right[6] += a6.y * bh1;
            right[7] += a7.y * bh1;
            let bl2 = w[wi + 2u * ws];
            let bh2 = w[wi + 2u * ws + 1u];
            left[0] += a0.z * bl2;
            left[1] += a1.z * bl2;
            left[2] += a2.z * bl2;
            left[3] += a3.z * bl2;
            left[4] += a4.z * bl2;
            left[5] += a5.z * bl2;
            left[6] += a6.z * bl2;
            left[7] += a7.z * bl2;
            right[0] += a0.z * bh2;
            right[1] += a1.z * bh2;
            right[2] += a2.z * bh2;
            right[3] += a3.z * bh2;
            right[4] += a4.z * bh2;
            right[5] += a5.z * bh2;
            right[6] += a6.z * bh2;
            right[7] += a7.z * bh2;
            let bl3 = w[wi + 3u * ws];
            let bh3 = w[wi + 3u * ws + 1u];
            left[0] += a0.w * bl3;
            left[1] += a1.w * bl3;
            left[2] += a2.w * bl3;
            left[3] += a3.w * bl3;
            left[4] += a4.w * bl3;
            left[5] += a5.w * bl3;
            left[6] += a6.w * bl3;
            left[7] += a7.w * bl3;
            right[0] += a0.w * bh3;
            right[1] += a1.w * bh3;
            right[2] += a2.w * bh3;
            right[3] += a3.w * bh3;
            right[4] += a4.w * bh3;
            right[5] += a5.w * bh3;
            right[6] += a6.w * bh3;
            right[7] += a7.w * bh3;
            if SWIGLU {
                let gl0 = w_gate[wi];
                let gh0 = w_gate[wi + 1u];
                gate_left[0] += a0.x * gl0;
                gate_left[1] += a1.x * gl0;
                gate_left[2] += a2.x * gl0;
                gate_left[3] += a3.x * gl0;
                gate_left[4] += a4.x * gl0;
                gate_left[5] += a5.x * gl0;
                gate_left[6] += a6.x * gl0;
                gate_left[7] += a7.x * gl0;
                gate_right[0] += a0.x * gh0;
                gate_right[1] += a1.x * gh0;
                gate_right[2] += a2.x * gh0;
                gate_right[3] += a3.x * gh0;
                gate_right[4] += a4.x * gh0;
                gate_right[5] += a5.x * gh0;
                gate_right[6] += a6.x * gh0;
                gate_right[7] += a7.x * gh0;
                let gl1 = w_gate[wi + 1u * ws];
                let gh1 = w_gate[wi + 1u * ws + 1u];
                gate_left[0] += a0.y * gl1;
                gate_left[1] += a1.y * gl1;
                gate_left[2] += a2.y * gl1;
                gate_left[3] += a3.y * gl1;
                gate_left[4] += a4.y * gl1;
                gate_left[5] += a5.y * gl1;
                gate_left[6] += a6.y * gl1;
                gate_left[7] += a7.y * gl1;
                gate_right[0] += a0.y * gh1;
                gate_right[1] += a1.y * gh1;
                gate_right[2] += a2.y * gh1;
                gate_right[3] += a3.y * gh1;
                gate_right[4] += a4.y * gh1;
                gate_right[5] += a5.y * gh1;
                gate_right[6] += a6.y * gh1;
                gate_right[7] += a7.y * gh1;
                let gl2 = w_gate[wi + 2u * ws];
                let gh2 = w_gate[wi + 2u * ws + 1u];
                gate_left[0] += a0.z * gl2;
                gate_left[1] += a1.z * gl2;
                gate_left[2] += a2.z * gl2;
                gate_left[3] += a3.z * gl2;
                gate_left[4] += a4.z * gl2;
                gate_left[5] += a5.z * gl2;
                gate_left[6] += a6.z * gl2;
                gate_left[7] += a7.z * gl2;
                gate_right[0] += a0.z * gh2;
                gate_right[1] += a1.z * gh2;
                gate_right[2] += a2.z * gh2;
                gate_right[3] += a3.z * gh2;
                gate_right[4] += a4.z * gh2;
                gate_right[5] += a5.z * gh2;
                gate_right[6] += a6.z * gh2;
                gate_right[7] += a7.z * gh2;
                let gl3 = w_gate[wi + 3u * ws];
                let gh3 = w_gate[wi + 3u * ws + 1u];
                gate_left[0] += a0.w * gl3;
                gate_left[1] += a1.w * gl3;
                gate_left[2] += a2.w * gl3;
                gate_left[3] += a3.w * gl3;
                gate_left[4] += a4.w * gl3;
                gate_left[5] += a5.w * gl3;
                gate_left[6] += a6.w * gl3;
                gate_left[7] += a7.w * gl3;
                gate_right[0] += a0.w * gh3;
                gate_right[1] += a1.w * gh3;
                gate_right[2] += a2.w * gh3;
                gate_right[3] += a3.w * gh3;
                gate_right[4] += a4.w * gh3;
                gate_right[5] += a5.w * gh3;
                gate_right[6] += a6.w * gh3;
                gate_right[7] += a7.w * gh3;
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
