//! Loading one MoE block of a Hugging Face safetensors checkpoint into a [`Moe`].

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use burn_store::burn_pack::Tensor as PackTensor;
use burn_store::{ModuleStore, SafetensorsStore};

use crate::balance::BalancerConfig;
use crate::error::{MoeError, Result};
use crate::hf::HfFamily;
use crate::moe::{ExpertActivation, ExpertFfn, Moe, MoeConfig};

/// The tensors of a safetensors file, or of every `*.safetensors` file of a directory (a
/// sharded checkpoint), read lazily through burn-store: a tensor's bytes are read, and converted
/// to `f32`, only when it is asked for.
pub struct HfTensors {
    source: String,
    tensors: BTreeMap<String, PackTensor>,
}

impl HfTensors {
    /// Opens the safetensors file at `path`, or every `*.safetensors` file in the directory
    /// `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let source = path.display().to_string();
        let files = if path.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(path)
                .map_err(|e| MoeError::Io(format!("reading directory {source}: {e}")))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(MoeError::Io(format!("{source} holds no .safetensors file")));
            }
            files
        } else if path.is_file() {
            vec![path.to_path_buf()]
        } else {
            return Err(MoeError::Io(format!("{source}: no such file or directory")));
        };
        let mut tensors = BTreeMap::new();
        for file in files {
            let shown = file.display().to_string();
            let mut store = SafetensorsStore::from_file(&file);
            let all = store.get_all_tensors().map_err(|e| {
                MoeError::Io(format!("{shown} is not a readable safetensors file: {e}"))
            })?;
            for (name, tensor) in all {
                tensors.insert(name.clone(), tensor.clone());
            }
        }
        Ok(HfTensors { source, tensors })
    }

    /// Names of every tensor.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Tensor `name` as stored, converted to `f32`, whatever its shape.
    pub fn raw(&self, name: &str) -> Result<TensorData> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| MoeError::Io(format!("{}: tensor `{name}` not found", self.source)))?;
        let data = burn_store::bridge::to_data(tensor)
            .map_err(|e| MoeError::Io(format!("{}: tensor `{name}`: {e}", self.source)))?;
        if !data.dtype().is_float() {
            return Err(MoeError::Io(format!(
                "{}: tensor `{name}` holds {:?}, not floats",
                self.source,
                data.dtype()
            )));
        }
        Ok(data.convert::<f32>())
    }

    /// Tensor `name` with the shape `dims` (`what` names the dimensions in the error).
    pub fn get<const D: usize>(
        &self,
        name: &str,
        dims: [usize; D],
        what: &str,
        device: &Device,
    ) -> Result<Tensor<D>> {
        if let Some(t) = self.tensors.get(name)
            && t.shape.as_slice() != dims
        {
            return Err(MoeError::Io(format!(
                "{}: tensor `{name}` has shape {:?}, the layer expects {dims:?} ({what})",
                self.source,
                t.shape.as_slice()
            )));
        }
        let values = self
            .raw(name)?
            .try_to_vec::<f32>()
            .map_err(|e| MoeError::Io(format!("{}: tensor `{name}`: {e:?}", self.source)))?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(MoeError::Io(format!(
                "{}: tensor `{name}` holds a non-finite value at flat index {i}",
                self.source
            )));
        }
        Ok(Tensor::from_data(TensorData::new(values, dims), device))
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Builds the [`Moe`] of `config` on `device` from the MoE block stored under `prefix` (for
/// example `model.layers.3.mlp.`) in the safetensors file at `path`, or in the safetensors
/// files of the directory `path` (a sharded checkpoint).
///
/// The routed experts may be stored stacked (`experts.gate_up_proj`, `experts.down_proj`, as
/// `transformers` 5 writes them) or one tensor per expert and matrix (`experts.{e}.w1.weight`
/// for Mixtral, `experts.{e}.gate_proj.weight` for the others, as published checkpoints hold
/// them). Reads [`HfFamily::read_config`]'s config for the same model.
///
/// # Errors
/// An unreadable file, a missing tensor or one of the wrong shape (the error names it), a
/// non-finite weight, or a config the family's block does not have.
pub fn load_moe(
    path: &Path,
    prefix: &str,
    family: HfFamily,
    config: &MoeConfig,
    device: &Device,
) -> Result<Moe> {
    load_moe_from(&HfTensors::read(path)?, prefix, family, config, device)
}

/// [`load_moe`] from tensors already read (several layers of one file).
pub fn load_moe_from(
    file: &HfTensors,
    prefix: &str,
    family: HfFamily,
    config: &MoeConfig,
    device: &Device,
) -> Result<Moe> {
    check_fits(family, config)?;
    config.validate()?;
    let mut moe = config.init(device);
    let (d, f, m) = (config.d_model, config.d_ff, config.num_experts);
    let name = |rest: &str| format!("{prefix}{rest}");
    // A PyTorch `Linear` weight `[out, in]` as one expert's `[1, in, out]`.
    let linear = |rest: &str, dims: [usize; 2], what: &str| -> Result<Tensor<3>> {
        let t: Tensor<2> = file.get(&name(rest), dims, what, device)?;
        Ok(t.transpose().unsqueeze_dim(0))
    };

    let router: Tensor<2> = file.get(&name("gate.weight"), [m, d], "experts, d_model", device)?;
    moe.router.gate.weight = Param::from_tensor(router.transpose());

    let stacked = name("experts.gate_up_proj");
    moe.experts = if file.has(&stacked) {
        let gate_up: Tensor<3> =
            file.get(&stacked, [m, 2 * f, d], "experts, 2 d_ff, d_model", device)?;
        let down: Tensor<3> = file.get(
            &name("experts.down_proj"),
            [m, d, f],
            "experts, d_model, d_ff",
            device,
        )?;
        ExpertFfn::from_weights(
            gate_up.clone().narrow(1, f, f).swap_dims(1, 2),
            Some(gate_up.narrow(1, 0, f).swap_dims(1, 2)),
            down.swap_dims(1, 2),
        )
    } else {
        let names = family.expert_names();
        let per_expert = |proj: &str, dims: [usize; 2], what: &str| -> Result<Tensor<3>> {
            let mats = (0..m)
                .map(|e| linear(&format!("experts.{e}.{proj}.weight"), dims, what))
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(mats, 0))
        };
        ExpertFfn::from_weights(
            per_expert(names.up, [f, d], "d_ff, d_model")?,
            Some(per_expert(names.gate, [f, d], "d_ff, d_model")?),
            per_expert(names.down, [d, f], "d_model, d_ff")?,
        )
    };

    if let Some(module) = family.shared_module() {
        let fs = config.num_shared_experts * config.d_ff_shared.unwrap_or(config.d_ff);
        let mat = |proj: &str, dims: [usize; 2], what: &str| {
            linear(&format!("{module}.{proj}.weight"), dims, what)
        };
        moe.shared = Some(ExpertFfn::from_weights(
            mat("up_proj", [fs, d], "shared d_ff, d_model")?,
            Some(mat("gate_proj", [fs, d], "shared d_ff, d_model")?),
            mat("down_proj", [d, fs], "d_model, shared d_ff")?,
        ));
    }
    if let Some(gate) = moe.shared_gate.as_mut() {
        let w: Tensor<2> = file.get(
            &name("shared_expert_gate.weight"),
            [1, d],
            "1, d_model",
            device,
        )?;
        gate.weight = Param::from_tensor(w.transpose());
    }
    if family == HfFamily::DeepseekV3 {
        let bias: Tensor<1> = file.get(
            &name("gate.e_score_correction_bias"),
            [m],
            "experts",
            device,
        )?;
        moe.balancer_state = Param::from_tensor(bias).set_require_grad(false);
    }
    Ok(moe)
}

/// The parts of `config` the family's checkpoint has to provide weights for.
pub(crate) fn check_fits(family: HfFamily, config: &MoeConfig) -> Result<()> {
    let mismatch = |what: &str| {
        Err(MoeError::Config(format!(
            "a {} MoE block {what}",
            family.model_type()
        )))
    };
    if config.activation != ExpertActivation::SwiGlu {
        return mismatch("has SwiGLU experts: set activation SwiGlu");
    }
    if config.noisy_gating {
        return mismatch("has no noise projection: turn noisy_gating off");
    }
    let has_shared = config.num_shared_experts > 0;
    if has_shared != family.shared_module().is_some() {
        return mismatch(if has_shared {
            "has no shared experts: set num_shared_experts 0"
        } else {
            "has shared experts: set num_shared_experts as its config.json says"
        });
    }
    if config.shared_expert_gate != (family == HfFamily::Qwen2Moe) {
        return mismatch(
            "decides the shared expert gate: set shared_expert_gate as read_config does",
        );
    }
    let adds_bias = matches!(
        config.balancer,
        BalancerConfig::LossFree { .. } | BalancerConfig::Quantile { .. }
    );
    if family == HfFamily::DeepseekV3 && !adds_bias {
        return mismatch(
            "selects with a bias added to the scores (e_score_correction_bias): use the \
             loss-free (or qb) balancer, whose state is that bias",
        );
    }
    Ok(())
}
