//! Expert FFNs with stacked weights: routed experts run as grouped matmuls over an
//! expert-sorted buffer, shared experts as one dense FFN.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};

use crate::grouped::{GroupOffsets, grouped_matmul, grouped_swiglu_ffn, swiglu};
use crate::moe::ExpertActivation;

/// `e` independent FFNs `d_model -> d_ff -> d_model` (no biases), weights stacked on dim 0.
///
/// Routed experts use one per expert; the shared experts of a layer are one `ExpertFfn` with
/// `e = 1` and `d_ff = num_shared * d_ff_shared` (the concatenation of the shared FFNs).
#[derive(Module, Debug)]
pub struct ExpertFfn {
    /// Input projections `[e, d_model, d_ff]`.
    pub w_in: Param<Tensor<3>>,
    /// SwiGLU gate projections `[e, d_model, d_ff]` (`None` for GELU experts).
    pub w_gate: Option<Param<Tensor<3>>>,
    /// Output projections `[e, d_ff, d_model]`.
    pub w_out: Param<Tensor<3>>,
}

impl ExpertFfn {
    /// Initialises `experts` FFNs like Burn's `Linear` (Kaiming uniform, `U(-1/sqrt(fan_in), ..)`).
    pub fn new(
        experts: usize,
        d_model: usize,
        d_ff: usize,
        activation: ExpertActivation,
        device: &Device,
    ) -> Self {
        let init = Initializer::KaimingUniform {
            gain: 1.0 / 3f64.sqrt(),
            fan_out_only: false,
        };
        let proj_in =
            || init.init_with([experts, d_model, d_ff], Some(d_model), Some(d_ff), device);
        ExpertFfn {
            w_in: proj_in(),
            w_gate: (activation == ExpertActivation::SwiGlu).then(proj_in),
            w_out: init.init_with([experts, d_ff, d_model], Some(d_ff), Some(d_model), device),
        }
    }

    /// Experts from their weights: `w_in`, `w_gate` `[e, d_model, d_ff]` (no `w_gate` for GELU
    /// experts), `w_out` `[e, d_ff, d_model]`.
    pub fn from_weights(w_in: Tensor<3>, w_gate: Option<Tensor<3>>, w_out: Tensor<3>) -> Self {
        ExpertFfn {
            w_in: Param::from_tensor(w_in),
            w_gate: w_gate.map(Param::from_tensor),
            w_out: Param::from_tensor(w_out),
        }
    }

    /// Number of experts `e`.
    pub fn experts(&self) -> usize {
        self.w_in.dims()[0]
    }

    /// Runs expert `i` on row block `x[i]`.
    ///
    /// # Shapes
    /// - x: `[e, tokens_per_expert, d_model]`
    /// - output: `[e, tokens_per_expert, d_model]`
    ///
    /// Zero rows map to zero rows (no biases), which the dispatcher relies on for padding.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let up = x.clone().matmul(self.w_in.val());
        let hidden = match &self.w_gate {
            Some(gate) => swiglu(x.matmul(gate.val()), up),
            None => exact_gelu(up),
        };
        hidden.matmul(self.w_out.val())
    }

    /// Runs each expert on its rows of an expert-sorted buffer (grouped matmuls; rows past
    /// the last expert's come out zero).
    ///
    /// # Shapes
    /// - x: `[rows, d_model]`, rows sorted by expert as `groups` says
    /// - output: `[rows, d_model]`
    pub fn forward_grouped(&self, x: Tensor<2>, groups: &GroupOffsets) -> Tensor<2> {
        if let (Some(gate), false) = (&self.w_gate, x.device().is_autodiff()) {
            return grouped_swiglu_ffn(x, groups, self.w_in.val(), gate.val(), self.w_out.val());
        }
        let up = grouped_matmul(x.clone(), groups, self.w_in.val());
        let hidden = match &self.w_gate {
            Some(gate) => swiglu(grouped_matmul(x, groups, gate.val()), up),
            None => exact_gelu(up),
        };
        grouped_matmul(hidden, groups, self.w_out.val())
    }
}

/// `x * Phi(x)` with the exact normal CDF, from tensor ops.
///
/// Burn 0.22's default `gelu_backward` (used by ndarray and wgpu) differentiates the tanh
/// approximation while the forward pass is exact, so its gradients are off by up to 1e-3 and
/// differ from flex's exact ones. Spelling GELU out lets autodiff derive the exact gradient
/// through `erf`, identically on every backend.
fn exact_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let cdf = (x.clone() * std::f64::consts::FRAC_1_SQRT_2)
        .erf()
        .add_scalar(1.0)
        * 0.5;
    x * cdf
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn gelu_value_and_gradient_are_exact() {
        #[allow(deprecated)]
        let device = Device::ndarray().autodiff();
        let xs: Vec<f32> = (0..41).map(|i| -4.0 + 0.2 * i as f32).collect();
        let x = Tensor::<1>::from_data(TensorData::new(xs.clone(), [41]), &device).require_grad();
        let y = exact_gelu(x.clone());
        let grads = y.clone().sum().backward();
        let dy = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        let y = y.into_data().try_into_vec_as::<f32>().unwrap();
        for (i, &x) in xs.iter().enumerate() {
            let x = x as f64;
            // erf from its Taylor series, independent of the backend's.
            let z = x / std::f64::consts::SQRT_2;
            let erf = (0..60)
                .map(|n| {
                    let fact: f64 = (1..=n).map(|k| k as f64).product();
                    (-1f64).powi(n) * z.powi(2 * n + 1) / (fact * (2 * n + 1) as f64)
                })
                .sum::<f64>()
                * 2.0
                / std::f64::consts::PI.sqrt();
            let cdf = 0.5 * (1.0 + erf);
            let pdf = (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!((y[i] as f64 - x * cdf).abs() < 1e-6, "gelu({x})");
            assert!((dy[i] as f64 - (cdf + x * pdf)).abs() < 1e-6, "gelu'({x})");
        }
    }
}
