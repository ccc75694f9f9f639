// Pass 2 of 3 of the per-expert histogram: one thread per (group, expert) turns the chunk counts
// into exclusive offsets along the group's chunks, and writes the group's requested count and the
// admitted count `min(requested, capacity)`.

struct Params {
    tokens: u32,
    top_k: u32,
    experts: u32,
    groups: u32,
    group_len: u32,
    chunks_per_group: u32,
    capacity: u32,
}

// Every binding is read_write: Burn pools tensors in shared wgpu buffers, and wgpu refuses a
// buffer bound read-only and read-write in one dispatch.
@group(0) @binding(0) var<storage, read_write> chunk_counts: array<u32>;
@group(0) @binding(1) var<storage, read_write> params: Params;
@group(0) @binding(2) var<storage, read_write> requested: array<i32>;
@group(0) @binding(3) var<storage, read_write> admitted: array<i32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let m = params.experts;
    if gid.x >= params.groups * m {
        return;
    }
    let group = gid.x / m;
    let e = gid.x % m;
    var running = 0u;
    for (var c = 0u; c < params.chunks_per_group; c++) {
        let slot = (group * params.chunks_per_group + c) * m + e;
        let here = chunk_counts[slot];
        chunk_counts[slot] = running;
        running += here;
    }
    requested[gid.x] = i32(running);
    admitted[gid.x] = i32(min(running, params.capacity));
}
