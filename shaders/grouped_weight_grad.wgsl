// The grouped GEMM's weight gradient `dw[g] = x_g^T dy_g` over each group's rows
// `offsets[g] <= r < offsets[g + 1]`: `x [rows, K]`, `dy [rows, N]` contiguous, K and N
// multiples of 4 (the caller pads other sizes), read as vec4. One workgroup of 64 invocations
// per (group, 64 x 64 tile of `dw[g]`); each invocation sums an 8 x 8 block over the group's
// rows from registers, loading per row two vec4 of `x` and two of `dy` for 64 products. Every output
// is written once by one invocation, no atomics: the sum runs in the same order every time. An
// empty group gets exact zeros.

const K: u32 = {{ k }}u;
const N: u32 = {{ n }}u;
const TK: u32 = 64u; // rows of the dw tile (along K)
const TN: u32 = 64u; // columns of the dw tile (along N)

@group(0) @binding(0) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dy: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> offsets: array<i32>;
@group(0) @binding(3) var<storage, read_write> dw: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = wid.y;
    let tiles_n = (N + TN - 1u) / TN;
    let k0 = (wid.x / tiles_n) * TK + (lid / 8u) * 8u;
    let n0 = (wid.x % tiles_n) * TN + (lid % 8u) * 8u;
    let begin = u32(offsets[g]);
    let end = u32(max(offsets[g + 1u], offsets[g]));
    let xs = K / 4u;
    let ys = N / 4u;
    // Blocks past K or N read valid rows and discard the sums.
    let xk = min(k0, K - 4u) / 4u;
    let xk2 = min(k0 + 4u, K - 4u) / 4u;
    let yn = min(n0, N - 4u) / 4u;
    let yn2 = min(n0 + 4u, N - 4u) / 4u;
    var left: array<vec4<f32>, 8>;
    var right: array<vec4<f32>, 8>;
    for (var r = begin; r < end; r++) {
        let a = x[r * xs + xk];
        let a2 = x[r * xs + xk2];
        let bl = dy[r * ys + yn];
        let bh = dy[r * ys + yn2];
        left[0] += a.x * bl;
        left[1] += a.y * bl;
        left[2] += a.z * bl;
        left[3] += a.w * bl;
        left[4] += a2.x * bl;
        left[5] += a2.y * bl;
        left[6] += a2.z * bl;
        left[7] += a2.w * bl;
        right[0] += a.x * bh;
        right[1] += a.y * bh;
        right[2] += a.z * bh;
        right[3] += a.w * bh;
        right[4] += a2.x * bh;
        right[5] += a2.y * bh;
        right[6] += a2.z * bh;
        right[7] += a2.w * bh;
    }
    let base = g * K * N;
    for (var i = 0u; i < 8u; i++) {
        let kk = k0 + i;
        if kk < K {
            for (var j = 0u; j < 4u; j++) {
                if n0 + j < N {
                    dw[base + kk * N + n0 + j] = left[i][j];
                }
                if n0 + 4u + j < N {
                    dw[base + kk * N + n0 + 4u + j] = right[i][j];
                }
            }
        }
    }
}
