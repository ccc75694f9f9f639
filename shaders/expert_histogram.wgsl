// Pass 1 of 3 of the per-expert histogram: token counts per expert in each chunk of 256
// assignments. Assignments are visited in admission order, group by group: all rank-0 choices in
// token order, then all rank-1 choices, ... (GShard), so chunk offsets (pass 2) and ranks inside
// a chunk (pass 3) give every assignment its position in its expert's queue.

struct Params {
    tokens: u32,
    top_k: u32,
    experts: u32,
    groups: u32,
    group_len: u32,
    chunks_per_group: u32,
    capacity: u32, // tokens * k when dropless
}

// Every binding is read_write: Burn pools tensors in shared wgpu buffers, and wgpu refuses a
// buffer bound read-only and read-write in one dispatch.
@group(0) @binding(0) var<storage, read_write> indices: array<i32>;
@group(0) @binding(1) var<storage, read_write> used: array<i32>;
@group(0) @binding(2) var<storage, read_write> params: Params;
@group(0) @binding(3) var<storage, read_write> chunk_counts: array<u32>;

const CHUNK: u32 = 256u;
var<workgroup> counts: array<atomic<u32>, {{ experts }}>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let chunk = wid.x;
    let m = params.experts;
    for (var e = lid; e < m; e += CHUNK) {
        atomicStore(&counts[e], 0u);
    }
    workgroupBarrier();

    let group = chunk / params.chunks_per_group;
    let p = (chunk % params.chunks_per_group) * CHUNK + lid;
    if p < params.group_len * params.top_k {
        let rank = p / params.group_len;
        let token = group * params.group_len + p % params.group_len;
        let a = token * params.top_k + rank;
        let e = indices[a];
        if e >= 0 && used[a] != 0 {
            atomicAdd(&counts[u32(e)], 1u);
        }
    }
    workgroupBarrier();

    for (var e = lid; e < m; e += CHUNK) {
        chunk_counts[chunk * m + e] = atomicLoad(&counts[e]);
    }
}
