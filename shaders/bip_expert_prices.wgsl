// BIP dual iteration, expert half: q_j = the price between the C-th and (C+1)-th largest over
// tokens i of (s_ij - p_i), C = floor(k n / m) = R - 1, one workgroup per expert. The (C+1)-th
// largest v comes from an exact radix select on the order-preserving integer image of the f32
// values (4 passes of 8 bits, a 256-bin histogram each), so no sort; a fifth pass finds the
// smallest value above v, and when exactly C values lie above v the price is their midpoint
// (a price on a value would leave a token on an exact tie). Clamped at 0 when `clamp` is set;
// 0 when R > n.

struct Params {
    tokens: u32,
    experts: u32,
    clamp: u32,
    expert_rank: u32,
}

// Every binding is read_write: Burn pools tensors in shared wgpu buffers, and wgpu refuses a
// buffer bound read-only and read-write in one dispatch.
@group(0) @binding(0) var<storage, read_write> scores: array<f32>;
@group(0) @binding(1) var<storage, read_write> p: array<f32>;
@group(0) @binding(2) var<storage, read_write> params: Params;
@group(0) @binding(3) var<storage, read_write> q: array<f32>;

const THREADS: u32 = 256u;
var<workgroup> histogram: array<atomic<u32>, 256>;
var<workgroup> chosen_prefix: u32;
var<workgroup> remaining_rank: u32;
var<workgroup> above_count: atomic<u32>;
var<workgroup> above_min: atomic<u32>;

// Larger float -> larger key (IEEE total order: -0 sorts below +0).
fn key_of(v: f32) -> u32 {
    let bits = bitcast<u32>(v);
    if (bits & 0x80000000u) != 0u {
        return ~bits;
    }
    return bits | 0x80000000u;
}

fn value_of(key: u32) -> f32 {
    if (key & 0x80000000u) != 0u {
        return bitcast<f32>(key & 0x7fffffffu);
    }
    return bitcast<f32>(~key);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = wid.x;
    let n = params.tokens;
    let m = params.experts;
    if lid == 0u {
        chosen_prefix = 0u;
        remaining_rank = params.expert_rank;
        atomicStore(&above_count, 0u);
        atomicStore(&above_min, 0xffffffffu);
    }
    workgroupBarrier();

    var mask = 0u;
    for (var pass_index = 0u; pass_index < 4u; pass_index++) {
        let shift = 24u - 8u * pass_index;
        atomicStore(&histogram[lid], 0u);
        workgroupBarrier();
        let prefix = chosen_prefix;
        for (var i = lid; i < n; i += THREADS) {
            let key = key_of(scores[i * m + j] - p[i]);
            if (key & mask) == prefix {
                atomicAdd(&histogram[(key >> shift) & 255u], 1u);
            }
        }
        workgroupBarrier();
        if lid == 0u {
            // Walk digits from the largest down until the rank falls inside one.
            var rank = remaining_rank;
            var digit = 255u;
            loop {
                let here = atomicLoad(&histogram[digit]);
                if rank <= here || digit == 0u {
                    break;
                }
                rank -= here;
                digit -= 1u;
            }
            remaining_rank = rank;
            chosen_prefix = prefix | (digit << shift);
        }
        workgroupBarrier();
        mask = mask | (255u << shift);
    }

    // The values above the selected one: how many, and the smallest.
    let chosen = chosen_prefix;
    for (var i = lid; i < n; i += THREADS) {
        let key = key_of(scores[i * m + j] - p[i]);
        if key > chosen {
            atomicAdd(&above_count, 1u);
            atomicMin(&above_min, key);
        }
    }
    workgroupBarrier();

    if lid == 0u {
        var price = 0.0;
        if params.expert_rank <= n {
            price = value_of(chosen);
            let admitted = params.expert_rank - 1u;
            if admitted >= 1u && atomicLoad(&above_count) == admitted {
                price = (value_of(atomicLoad(&above_min)) + price) * 0.5;
            }
            if params.clamp == 1u {
                price = max(price, 0.0);
            }
        }
        q[j] = price;
    }
}
