// Loss-Free balancing update, one workgroup: b_j += u * step_j with e_j = mean(c) - c_j and
// step = sign(e_j) (sign form) or e_j / mean(c) (proportional form). c_j sums the requested
// counts of expert j over the groups.

struct Params {
    experts: u32,
    groups: u32,
    proportional: u32,
    rate_bits: u32, // f32 bit pattern of u
}

// Every binding is read_write: Burn pools tensors in shared wgpu buffers, and wgpu refuses a
// buffer bound read-only and read-write in one dispatch.
@group(0) @binding(0) var<storage, read_write> bias: array<f32>;
@group(0) @binding(1) var<storage, read_write> requested: array<i32>;
@group(0) @binding(2) var<storage, read_write> params: Params;
@group(0) @binding(3) var<storage, read_write> new_bias: array<f32>;

const THREADS: u32 = 256u;
var<workgroup> partial: array<u32, 256>;

fn load(e: u32) -> u32 {
    var c = 0u;
    for (var g = 0u; g < params.groups; g++) {
        c += u32(requested[g * params.experts + e]);
    }
    return c;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    let m = params.experts;
    var sum = 0u;
    for (var e = lid; e < m; e += THREADS) {
        sum += load(e);
    }
    partial[lid] = sum;
    workgroupBarrier();
    for (var stride = THREADS / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    let mean = f32(partial[0]) / f32(m);
    let rate = bitcast<f32>(params.rate_bits);
    for (var e = lid; e < m; e += THREADS) {
        let error = mean - f32(load(e));
        var step = 0.0;
        if params.proportional == 1u {
            if mean > 0.0 {
                step = error / mean;
            }
        } else {
            step = select(select(0.0, -1.0, error < 0.0), 1.0, error > 0.0);
        }
        new_bias[e] = bias[e] + rate * step;
    }
}
