//! Run-time backend choice: wgpu (any GPU), ndarray or flex (CPU), with a clear error when no GPU
//! adapter exists.
#![allow(deprecated)] // `Device::ndarray` is deprecated in Burn 0.22 in favour of flex; we support both.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Device, DeviceKind};

use crate::error::{MoeError, Result};

/// The compute backends burn-moe runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Burn's wgpu backend: Vulkan, Metal, DX12 or WebGPU, whichever the machine has.
    Wgpu,
    /// Burn's ndarray CPU backend (the project's reference CPU backend).
    Ndarray,
    /// Burn's flex CPU backend (SIMD, multi-threaded).
    Flex,
}

impl BackendKind {
    /// All backends, in the order tests and benchmarks report them.
    pub const ALL: [BackendKind; 3] = [BackendKind::Ndarray, BackendKind::Flex, BackendKind::Wgpu];

    /// Creates the Burn device for this backend; `autodiff` wraps it for training.
    ///
    /// For wgpu this first asks wgpu for an adapter, so a machine without a GPU driver gets an
    /// error that names the fix instead of a panic deep inside the runtime.
    pub fn device(self, autodiff: bool) -> Result<Device> {
        let device = match self {
            BackendKind::Ndarray => Device::ndarray(),
            BackendKind::Flex => Device::flex(),
            BackendKind::Wgpu => {
                probe_wgpu_adapter()?;
                Device::wgpu(DeviceKind::DefaultDevice)
            }
        };
        Ok(if autodiff { device.autodiff() } else { device })
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Wgpu => "wgpu",
            BackendKind::Ndarray => "ndarray",
            BackendKind::Flex => "flex",
        })
    }
}

impl FromStr for BackendKind {
    type Err = MoeError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "wgpu" | "gpu" => Ok(BackendKind::Wgpu),
            "ndarray" => Ok(BackendKind::Ndarray),
            "flex" | "cpu" => Ok(BackendKind::Flex),
            other => Err(MoeError::Backend(format!(
                "unknown backend `{other}`: expected one of wgpu, ndarray, flex"
            ))),
        }
    }
}

/// What wgpu reports about the adapter Burn's wgpu backend will run on.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    /// Adapter name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)` or a GPU's marketing name.
    pub name: String,
    /// Graphics API: Vulkan, Metal, Dx12, Gl or BrowserWebGpu.
    pub backend: String,
    /// Discrete, integrated, virtual GPU, or CPU (a software rasteriser such as lavapipe).
    pub device_type: String,
}

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {})", self.name, self.backend, self.device_type)
    }
}

/// Asks wgpu for the default adapter of a graphics API the routing kernels are tested on
/// (Vulkan, Metal, DX12, WebGPU). Errors, naming the fix, when there is none: OpenGL adapters are
/// not used (on GL the BIP and quantile price kernels gave other prices than on Vulkan).
pub fn probe_wgpu_adapter() -> Result<AdapterSummary> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        ..Default::default()
    }))
    .map_err(|e| {
        MoeError::Backend(format!(
            "no Vulkan, Metal, DX12 or WebGPU adapter found for wgpu ({e}; OpenGL adapters are \
             not used). Install a Vulkan, Metal or DX12 driver \
             (on Debian/Ubuntu without a GPU: `apt-get install mesa-vulkan-drivers libvulkan1` \
             for the lavapipe software driver), or pick a CPU backend with `--backend flex` or \
             `--backend ndarray`"
        ))
    })?;
    let info = adapter.get_info();
    Ok(AdapterSummary {
        name: info.name,
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backend_names() {
        assert_eq!("wgpu".parse::<BackendKind>(), Ok(BackendKind::Wgpu));
        assert_eq!("NDARRAY".parse::<BackendKind>(), Ok(BackendKind::Ndarray));
        assert_eq!("flex".parse::<BackendKind>(), Ok(BackendKind::Flex));
        let err = "cuda".parse::<BackendKind>().unwrap_err();
        assert!(
            err.to_string()
                .contains("expected one of wgpu, ndarray, flex")
        );
    }
}
