//! Writing a [`Moe`] as a Hugging Face MoE block in a safetensors file.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::Tensor;
use safetensors::tensor::{Dtype, TensorView};

use crate::checkpoint::write_bytes_atomic;
use crate::error::{MoeError, Result};
use crate::hf::HfFamily;
use crate::hf::import::check_fits;
use crate::moe::Moe;

/// How the routed experts' weights are laid out in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfExpertLayout {
    /// `experts.gate_up_proj` `[m, 2 d_ff, d_model]` and `experts.down_proj`
    /// `[m, d_model, d_ff]`, as `transformers` 5 writes them.
    Stacked,
    /// One tensor per expert and matrix (`experts.{e}.w1.weight`, ...), as the published
    /// checkpoints hold them.
    PerExpert,
}

/// One named tensor on the host, row-major `f32`.
struct Named {
    name: String,
    dims: Vec<usize>,
    values: Vec<f32>,
}

fn host<const D: usize>(name: String, t: Tensor<D>) -> Result<Named> {
    let dims = t.dims().to_vec();
    let values = t
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| MoeError::Backend(format!("reading `{name}` back: {e:?}")))?;
    Ok(Named { name, dims, values })
}

/// Writes `moe` as the MoE block `prefix` (for example `model.layers.3.mlp.`) of a `family`
/// model to the safetensors file `path`, atomically (a temporary file, then a rename). Only
/// this block's tensors are written; [`super::load_moe`] reads them back.
pub fn save_moe(
    moe: &Moe,
    family: HfFamily,
    prefix: &str,
    layout: HfExpertLayout,
    path: &Path,
) -> Result<()> {
    check_fits(family, &moe.config)?;
    let name = |rest: &str| format!("{prefix}{rest}");
    let mut out = vec![host(
        name("gate.weight"),
        moe.router.gate.weight.val().transpose(),
    )?];
    let experts = &moe.experts;
    let gate = experts
        .w_gate
        .as_ref()
        .ok_or_else(|| MoeError::Config("SwiGLU experts have a gate projection".into()))?
        .val()
        .swap_dims(1, 2); // [m, f, d]
    let up = experts.w_in.val().swap_dims(1, 2); // [m, f, d]
    let down = experts.w_out.val().swap_dims(1, 2); // [m, d, f]
    match layout {
        HfExpertLayout::Stacked => {
            out.push(host(
                name("experts.gate_up_proj"),
                Tensor::cat(vec![gate, up], 1),
            )?);
            out.push(host(name("experts.down_proj"), down)?);
        }
        HfExpertLayout::PerExpert => {
            let names = family.expert_names();
            for e in 0..experts.experts() {
                for (proj, t) in [(names.gate, &gate), (names.up, &up), (names.down, &down)] {
                    let w: Tensor<2> = t.clone().narrow(0, e, 1).squeeze_dim(0);
                    out.push(host(name(&format!("experts.{e}.{proj}.weight")), w)?);
                }
            }
        }
    }
    if let (Some(module), Some(shared)) = (family.shared_module(), &moe.shared) {
        let squeeze = |t: Tensor<3>| -> Tensor<2> { t.squeeze_dim(0) };
        if let Some(g) = &shared.w_gate {
            out.push(host(
                name(&format!("{module}.gate_proj.weight")),
                squeeze(g.val()).transpose(),
            )?);
        }
        out.push(host(
            name(&format!("{module}.up_proj.weight")),
            squeeze(shared.w_in.val()).transpose(),
        )?);
        out.push(host(
            name(&format!("{module}.down_proj.weight")),
            squeeze(shared.w_out.val()).transpose(),
        )?);
    }
    if let Some(g) = &moe.shared_gate {
        out.push(host(
            name("shared_expert_gate.weight"),
            g.weight.val().transpose(),
        )?);
    }
    if family == HfFamily::DeepseekV3 {
        out.push(host(
            name("gate.e_score_correction_bias"),
            moe.balancer_state.val(),
        )?);
    }
    write_safetensors(&out, path)
}

fn write_safetensors(tensors: &[Named], path: &Path) -> Result<()> {
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(Dtype::F32, t.dims.clone(), bytemuck::cast_slice(&t.values))
                .map(|v| (t.name.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| MoeError::Io(format!("building {}: {e}", path.display())))?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| MoeError::Io(format!("serialising {}: {e}", path.display())))?;
    write_bytes_atomic(path, &bytes)
}
