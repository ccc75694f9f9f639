//! [`HfFamily`]: the Hugging Face MoE model families, their `config.json` and tensor names.

use std::path::Path;

use serde_json::Value;

use crate::balance::{BalancerConfig, LossFreeUpdate};
use crate::error::{MoeError, Result};
use crate::moe::{MoeConfig, ScoreFunction};
use crate::routing::GroupScore;

/// A family of Hugging Face MoE models whose MoE blocks load into a [`Moe`](crate::Moe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfFamily {
    /// Mixtral: softmax top-k, gates renormalised over the chosen experts.
    Mixtral,
    /// Qwen2-MoE: softmax top-k (`norm_topk_prob`), one shared expert with a sigmoid gate.
    Qwen2Moe,
    /// Qwen3-MoE: softmax top-k (`norm_topk_prob`).
    Qwen3Moe,
    /// OLMoE: softmax top-k (`norm_topk_prob`).
    Olmoe,
    /// DeepSeek-V3: sigmoid scores, `e_score_correction_bias` as the Loss-Free bias,
    /// group-limited routing, shared experts, `routed_scaling_factor`.
    DeepseekV3,
}

/// Names of one projection of the experts in a per-expert checkpoint.
pub(crate) struct ExpertNames {
    pub gate: &'static str,
    pub up: &'static str,
    pub down: &'static str,
}

impl HfFamily {
    /// The family of a `config.json`'s `model_type`.
    pub fn from_model_type(model_type: &str) -> Result<Self> {
        Ok(match model_type {
            "mixtral" => HfFamily::Mixtral,
            "qwen2_moe" => HfFamily::Qwen2Moe,
            "qwen3_moe" => HfFamily::Qwen3Moe,
            "olmoe" => HfFamily::Olmoe,
            "deepseek_v3" => HfFamily::DeepseekV3,
            other => {
                return Err(MoeError::Config(format!(
                    "model_type `{other}` is not supported: expected mixtral, qwen2_moe, \
                     qwen3_moe, olmoe or deepseek_v3"
                )));
            }
        })
    }

    /// The `model_type` of this family.
    pub fn model_type(&self) -> &'static str {
        match self {
            HfFamily::Mixtral => "mixtral",
            HfFamily::Qwen2Moe => "qwen2_moe",
            HfFamily::Qwen3Moe => "qwen3_moe",
            HfFamily::Olmoe => "olmoe",
            HfFamily::DeepseekV3 => "deepseek_v3",
        }
    }

    /// Per-expert tensor names (`experts.{e}.<name>.weight`) of the published checkpoints.
    pub(crate) fn expert_names(&self) -> ExpertNames {
        match self {
            HfFamily::Mixtral => ExpertNames {
                gate: "w1",
                up: "w3",
                down: "w2",
            },
            _ => ExpertNames {
                gate: "gate_proj",
                up: "up_proj",
                down: "down_proj",
            },
        }
    }

    /// The module holding the shared experts, if the family has them.
    pub(crate) fn shared_module(&self) -> Option<&'static str> {
        match self {
            HfFamily::Qwen2Moe => Some("shared_expert"),
            HfFamily::DeepseekV3 => Some("shared_experts"),
            _ => None,
        }
    }

    /// Reads a model's `config.json`: its family and the config of its MoE layers.
    pub fn read_config(path: &Path) -> Result<(HfFamily, MoeConfig)> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| MoeError::Io(format!("reading {}: {e}", path.display())))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| MoeError::Io(format!("{} is not valid JSON: {e}", path.display())))?;
        let family = Self::from_model_type(json["model_type"].as_str().unwrap_or("(none)"))?;
        let config = family.moe_config(&json).map_err(|e| match e {
            MoeError::Config(msg) => MoeError::Config(format!("{}: {msg}", path.display())),
            other => other,
        })?;
        Ok((family, config))
    }

    /// The [`MoeConfig`] of this family's MoE layer from the fields of its `config.json`.
    pub fn moe_config(&self, json: &Value) -> Result<MoeConfig> {
        let act = json["hidden_act"].as_str().unwrap_or("silu");
        if act != "silu" {
            return Err(MoeError::Config(format!(
                "hidden_act `{act}` is not supported: the experts are SwiGLU (silu)"
            )));
        }
        let d_model = field(json, &["hidden_size"])?;
        let d_ff = field(json, &["moe_intermediate_size", "intermediate_size"])?;
        let experts = field(
            json,
            &["n_routed_experts", "num_local_experts", "num_experts"],
        )?;
        let top_k = field(json, &["num_experts_per_tok"])?;
        let norm = json["norm_topk_prob"].as_bool();
        let config = MoeConfig::new(d_model, d_ff, experts).with_top_k(top_k);
        let config = match self {
            HfFamily::Mixtral => config.with_normalize_gates(true),
            HfFamily::Qwen3Moe | HfFamily::Olmoe => {
                config.with_normalize_gates(norm.unwrap_or(false))
            }
            HfFamily::Qwen2Moe => config
                .with_normalize_gates(norm.unwrap_or(false))
                .with_num_shared_experts(1)
                .with_d_ff_shared(Some(field(json, &["shared_expert_intermediate_size"])?))
                .with_shared_expert_gate(true),
            HfFamily::DeepseekV3 => config
                .with_score_function(ScoreFunction::Sigmoid)
                .with_normalize_gates(norm.unwrap_or(true))
                .with_routed_scaling_factor(json["routed_scaling_factor"].as_f64().unwrap_or(1.0))
                .with_expert_groups(field(json, &["n_group"]).unwrap_or(1))
                .with_top_groups(field(json, &["topk_group"]).unwrap_or(1))
                .with_group_score(GroupScore::TopTwoSum)
                .with_num_shared_experts(field(json, &["n_shared_experts"]).unwrap_or(0))
                .with_balancer(BalancerConfig::LossFree {
                    rate: 0.001,
                    update: LossFreeUpdate::Sign,
                }),
        };
        config.validate()?;
        Ok(config)
    }
}

/// The first of `names` present in `json` as a positive integer.
fn field(json: &Value, names: &[&str]) -> Result<usize> {
    names
        .iter()
        .find_map(|n| json[*n].as_u64())
        .filter(|&v| v > 0)
        .map(|v| v as usize)
        .ok_or_else(|| {
            MoeError::Config(format!(
                "config.json has no positive integer {}",
                names.join(" or ")
            ))
        })
}
