// Gating and top-k selection, one thread per token.
//
// Scores are softmax or sigmoid of the router logits. Selection ranks `score + offset` (the
// balancer's bias `b` or `-q`); the gates are the raw scores of the chosen experts, divided by
// their sum when `normalize` is set. Ties go to the lower expert index, as on the host.
// A token with a NaN or infinite logit gets index -1 in every slot, so the caller can report it.
// GShard random routing: the 2nd choice is used only if 2 * s2 / (s1 + s2) > draw.
// Group-limited routing: the experts form `groups` equal groups; a token chooses only inside
// its best `top_groups` groups, scored by their largest selection value or the sum of their two
// largest (ties to the lower group index). The kept groups are bits of a u32 mask (<= 32 groups).

struct Params {
    tokens: u32,
    experts: u32,
    score_fn: u32,      // 0 = softmax, 1 = sigmoid
    normalize: u32,     // 1: gates / sum over the chosen experts
    random_second: u32, // 1: apply GShard's rule to the 2nd choice
    groups: u32,        // expert groups (1: no group limit)
    top_groups: u32,    // groups each token keeps
    top_two_sum: u32,   // 1: group score = sum of the two largest values, 0: the largest
}

// Every binding is read_write: Burn pools tensors in shared wgpu buffers, and wgpu refuses a
// buffer bound read-only and read-write in one dispatch.
@group(0) @binding(0) var<storage, read_write> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> offset: array<f32>;
@group(0) @binding(2) var<storage, read_write> draws: array<f32>;
@group(0) @binding(3) var<storage, read_write> params: Params;
@group(0) @binding(4) var<storage, read_write> indices: array<i32>;
@group(0) @binding(5) var<storage, read_write> gates: array<f32>;
@group(0) @binding(6) var<storage, read_write> used: array<i32>;

const K: u32 = {{ top_k }}u;

fn is_finite(v: f32) -> bool {
    // Bit test: compilers may assume floats are never NaN, so `v != v` is not reliable.
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

fn score(l: f32, row_max: f32, denom: f32) -> f32 {
    if params.score_fn == 0u {
        return exp(l - row_max) / denom;
    }
    return 1.0 / (1.0 + exp(-l));
}

@compute @workgroup_size({{ workgroup }})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if t >= params.tokens {
        return;
    }
    let m = params.experts;
    let row = t * m;

    var finite = true;
    var row_max = logits[row];
    for (var j = 0u; j < m; j++) {
        let l = logits[row + j];
        finite = finite && is_finite(l);
        row_max = max(row_max, l);
    }
    if !finite {
        for (var r = 0u; r < K; r++) {
            indices[t * K + r] = -1;
            gates[t * K + r] = 0.0;
            used[t * K + r] = 0;
        }
        return;
    }
    var denom = 0.0;
    if params.score_fn == 0u {
        for (var j = 0u; j < m; j++) {
            denom += exp(logits[row + j] - row_max);
        }
    }

    // The kept groups: `top_groups` passes, each taking the best group not yet kept.
    var kept = 0xffffffffu;
    if params.groups > 1u {
        kept = 0u;
        let per_group = m / params.groups;
        for (var n = 0u; n < params.top_groups; n++) {
            var best_group = 0u;
            var best_score = 0.0;
            var found = false;
            for (var g = 0u; g < params.groups; g++) {
                if (kept & (1u << g)) != 0u {
                    continue;
                }
                var first = -3.4e38;
                var second = -3.4e38;
                for (var i = 0u; i < per_group; i++) {
                    let j = g * per_group + i;
                    let v = score(logits[row + j], row_max, denom) + offset[j];
                    if v > first {
                        second = first;
                        first = v;
                    } else if v > second {
                        second = v;
                    }
                }
                var s = first;
                if params.top_two_sum == 1u {
                    s = first + second;
                }
                if !found || s > best_score {
                    best_group = g;
                    best_score = s;
                    found = true;
                }
            }
            kept = kept | (1u << best_group);
        }
    }

    // Insertion into a sorted list of the best K; a later expert displaces an earlier one only
    // when strictly better, which keeps ties on the lower index.
    var best_value: array<f32, K>;
    var best_index: array<u32, K>;
    var filled = 0u;
    let per_group = m / params.groups;
    for (var j = 0u; j < m; j++) {
        if (kept & (1u << (j / per_group))) == 0u {
            continue;
        }
        let v = score(logits[row + j], row_max, denom) + offset[j];
        if filled == K && !(v > best_value[K - 1u]) {
            continue;
        }
        var pos = min(filled, K - 1u);
        while pos > 0u && v > best_value[pos - 1u] {
            best_value[pos] = best_value[pos - 1u];
            best_index[pos] = best_index[pos - 1u];
            pos -= 1u;
        }
        best_value[pos] = v;
        best_index[pos] = j;
        filled = min(filled + 1u, K);
    }

    var total = 0.0;
    for (var r = 0u; r < K; r++) {
        let s = score(logits[row + best_index[r]], row_max, denom);
        gates[t * K + r] = s;
        total += s;
        indices[t * K + r] = i32(best_index[r]);
        used[t * K + r] = 1;
    }
    if params.random_second == 1u && K >= 2u {
        let s1 = gates[t * K];
        let s2 = gates[t * K + 1u];
        if !(2.0 * (s2 / (s1 + s2)) > draws[t]) {
            used[t * K + 1u] = 0;
        }
    }
    if params.normalize == 1u {
        for (var r = 0u; r < K; r++) {
            gates[t * K + r] = gates[t * K + r] / total;
        }
    }
}
