//! The SwiGLU expert FFN for inference on the CPU, fused per block of rows: the block's gate
//! and up projections, their SwiGLU and the down projection run while the block is in cache,
//! so the `[rows, d_ff]` intermediates never go to memory. Training keeps the three grouped
//! matmuls (their activations are saved for the backward pass anyway).

use super::cpu::{ROW_BLOCK, Stacked, by_row_blocks, check_offsets, gemm_rows};
use super::swiglu::exp;

/// `y[r] = (silu(x[r] w_gate[g]) * (x[r] w_in[g])) w_out[g]` for each row `r` of group `g`;
/// rows past the last group are zero.
///
/// `x`: `[rows, d]` contiguous; `w_in`, `w_gate`: `[groups, d, f]`; `w_out`: `[groups, f, d]`.
pub(crate) fn grouped_swiglu_ffn(
    x: &[f32],
    d: usize,
    offsets: &[usize],
    [w_in, w_gate, w_out]: [Stacked<'_>; 3],
    f: usize,
) -> Vec<f32> {
    let rows = x.len() / d.max(1);
    let groups = offsets.len() - 1;
    check_offsets(offsets, rows);
    assert!(x.len() == rows * d, "grouped FFN: shapes");
    w_in.check(groups, d, f);
    w_gate.check(groups, d, f);
    w_out.check(groups, f, d);
    by_row_blocks(offsets, rows, d, ROW_BLOCK, |g, start, len, block| {
        let mut gate = Vec::with_capacity(len * f);
        let mut up = Vec::with_capacity(len * f);
        // SAFETY: rows `start..start + len` of `x` exist (offsets checked), the weights were
        // checked, and each output holds `len * f` (scratch) or `len * d` (block) values; gemm
        // overwrites all of them before `set_len`.
        unsafe {
            let lhs = x.as_ptr().add(start * d);
            gemm_rows(gate.as_mut_ptr(), len, f, d, lhs, w_gate, g);
            gemm_rows(up.as_mut_ptr(), len, f, d, lhs, w_in, g);
            gate.set_len(len * f);
            up.set_len(len * f);
        }
        for (a, u) in gate.iter_mut().zip(&up) {
            *a = *a / (1.0 + exp(-*a)) * u;
        }
        // SAFETY: `gate` now holds the `len` hidden rows of `f`; `block` holds `len * d`.
        unsafe {
            gemm_rows(
                block.as_mut_ptr().cast(),
                len,
                d,
                f,
                gate.as_ptr(),
                w_out,
                g,
            )
        };
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grouped::cpu::grouped_matmul;

    /// The CPU kernels' test values, scaled into [-0.25, 0.25).
    fn values(len: usize, seed: u32) -> Vec<f32> {
        crate::grouped::cpu::tests::values(len, seed)
            .into_iter()
            .map(|v| v * 0.25)
            .collect()
    }

    /// Against the three unfused grouped matmuls and a plain SwiGLU.
    #[test]
    fn matches_the_unfused_form() {
        let (d, f) = (9, 13);
        let offsets = [0, 300, 300, 307, 601];
        let rows = 605;
        let x = values(rows * d, 1);
        let (w_in, w_gate, w_out) = (
            values(4 * d * f, 2),
            values(4 * d * f, 3),
            values(4 * f * d, 4),
        );
        let fused = grouped_swiglu_ffn(
            &x,
            d,
            &offsets,
            [
                Stacked::dense(&w_in, d, f),
                Stacked::dense(&w_gate, d, f),
                Stacked::dense(&w_out, f, d),
            ],
            f,
        );
        let up = grouped_matmul(&x, d, &offsets, Stacked::dense(&w_in, d, f), f);
        let gate = grouped_matmul(&x, d, &offsets, Stacked::dense(&w_gate, d, f), f);
        let hidden: Vec<f32> = gate
            .iter()
            .zip(&up)
            .map(|(&a, &u)| a / (1.0 + (-a).exp()) * u)
            .collect();
        let want = grouped_matmul(&hidden, f, &offsets, Stacked::dense(&w_out, f, d), d);
        for (i, (a, b)) in fused.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{i}: {a} vs {b}");
        }
        assert!(fused[601 * d..].iter().all(|v| *v == 0.0));
    }
}
