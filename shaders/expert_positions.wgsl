// Pass 3 of 3 of the per-expert histogram: each assignment's position in its expert's queue
// (chunk offset from pass 2 plus its rank among the chunk's earlier assignments to the same
// expert). The assignment is admitted when position < capacity. Unused or invalid: -1.

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
@group(0) @binding(0) var<storage, read_write> indices: array<i32>;
@group(0) @binding(1) var<storage, read_write> used: array<i32>;
@group(0) @binding(2) var<storage, read_write> chunk_offsets: array<u32>;
@group(0) @binding(3) var<storage, read_write> params: Params;
@group(0) @binding(4) var<storage, read_write> positions: array<i32>;

const CHUNK: u32 = 256u;
var<workgroup> chunk_experts: array<i32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let chunk = wid.x;
    let group = chunk / params.chunks_per_group;
    let p = (chunk % params.chunks_per_group) * CHUNK + lid;
    let in_range = p < params.group_len * params.top_k;
    var a = 0u;
    var e = -1;
    if in_range {
        let rank = p / params.group_len;
        let token = group * params.group_len + p % params.group_len;
        a = token * params.top_k + rank;
        if indices[a] >= 0 && used[a] != 0 {
            e = indices[a];
        }
    }
    chunk_experts[lid] = e;
    workgroupBarrier();

    if !in_range {
        return;
    }
    if e < 0 {
        positions[a] = -1;
        return;
    }
    var before = 0u;
    for (var j = 0u; j < lid; j++) {
        before += select(0u, 1u, chunk_experts[j] == e);
    }
    positions[a] = i32(chunk_offsets[chunk * params.experts + u32(e)] + before);
}
