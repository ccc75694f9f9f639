// BIP dual iteration, token half: p_i = (k+1)-th largest over j of (s_ij - q_j), one thread per
// token (never clamped: every token takes exactly k experts); 0 when k = m (no (k+1)-th value).
// Also quantile balancing's token cutoffs (q = -b).

struct Params {
    tokens: u32,
    experts: u32,
    clamp: u32,       // used by the expert half
    expert_rank: u32, // floor(k n / m) + 1, used by the expert half
}

// Every binding is read_write: Burn pools tensors in shared wgpu buffers, and wgpu refuses a
// buffer bound read-only and read-write in one dispatch.
@group(0) @binding(0) var<storage, read_write> scores: array<f32>;
@group(0) @binding(1) var<storage, read_write> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> params: Params;
@group(0) @binding(3) var<storage, read_write> p: array<f32>;

const RANK: u32 = {{ rank }}u; // k + 1

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if t >= params.tokens {
        return;
    }
    let m = params.experts;
    if RANK > m {
        p[t] = 0.0;
        return;
    }
    // The best RANK values in descending order; ties are kept with multiplicity.
    var best: array<f32, RANK>;
    var filled = 0u;
    for (var j = 0u; j < m; j++) {
        let v = scores[t * m + j] - q[j];
        if filled == RANK && !(v > best[RANK - 1u]) {
            continue;
        }
        var pos = min(filled, RANK - 1u);
        while pos > 0u && v > best[pos - 1u] {
            best[pos] = best[pos - 1u];
            pos -= 1u;
        }
        best[pos] = v;
        filled = min(filled + 1u, RANK);
    }
    p[t] = best[RANK - 1u];
}
