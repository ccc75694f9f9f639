// The tile map of the grouped GEMMs, on the device: `tile_start[g]` is the first row tile of
// group `g` (tiles of TILE_ROWS rows, none spanning two groups), `tile_start[groups]` the first
// tile of the rows past the last group (zeroed by the GEMM), `tile_start[groups + 1]` the count.
// A GEMM workgroup finds its group by binary search, so no host ever reads the offsets. One
// thread: `groups` is at most a few thousand.

struct Params {
    rows: u32,
    groups: u32,
}

const TILE_ROWS: u32 = {{ tile_rows }}u;

@group(0) @binding(0) var<storage, read_write> offsets: array<i32>;
@group(0) @binding(1) var<storage, read_write> params: Params;
@group(0) @binding(2) var<storage, read_write> tile_start: array<u32>;

@compute @workgroup_size(1)
fn main() {
    var tiles = 0u;
    for (var g = 0u; g < params.groups; g++) {
        tile_start[g] = tiles;
        let count = u32(max(offsets[g + 1u] - offsets[g], 0));
        tiles += (count + TILE_ROWS - 1u) / TILE_ROWS;
    }
    tile_start[params.groups] = tiles;
    let tail = params.rows - min(u32(max(offsets[params.groups], 0)), params.rows);
    tile_start[params.groups + 1u] = tiles + (tail + TILE_ROWS - 1u) / TILE_ROWS;
}
