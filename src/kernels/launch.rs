//! Launching the WGSL shaders of `shaders/` on Burn's cube (wgpu) tensors without a host copy:
//! template values, buffers bound in order, scalars in a small storage buffer cast with bytemuck.

use burn::backend::wgpu::{CubeTensor, KernelSource, SourceKernel, SourceTemplate};
use burn::tensor::{DType, Shape};
use burn_cubecl::cubecl::prelude::KernelId;
use burn_cubecl::cubecl::server::{Handle, KernelArguments};
use burn_cubecl::cubecl::{CubeCount, CubeDim};

/// Assignments per histogram chunk: the workgroup size of the histogram passes.
pub(crate) const CHUNK: usize = 256;
/// Most workgroups one dispatch dimension may hold under WebGPU's default limits.
const MAX_WORKGROUPS: usize = 65_535;

/// One shader with its template values (`{{ name }}` placeholders).
pub(crate) struct WgslKernel {
    name: &'static str,
    source: &'static str,
    values: Vec<(&'static str, String)>,
}

impl KernelSource for WgslKernel {
    fn source(&self) -> SourceTemplate {
        self.values
            .iter()
            .fold(SourceTemplate::new(self.source), |t, (k, v)| {
                t.register(*k, v.clone())
            })
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.name, self.values.clone()))
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

pub(crate) fn kernel(
    name: &'static str,
    source: &'static str,
    values: &[(&'static str, usize)],
) -> WgslKernel {
    WgslKernel {
        name,
        source,
        values: values.iter().map(|(k, v)| (*k, v.to_string())).collect(),
    }
}

impl WgslKernel {
    /// Adds a template value of any printable kind (`true`, `4`, ...).
    pub(crate) fn with(mut self, name: &'static str, value: impl ToString) -> Self {
        self.values.push((name, value.to_string()));
        self
    }
}

/// Launches `kernel` on a grid of `[x, y]` workgroups of `workgroup_size` invocations; buffers
/// are bound in order.
pub(crate) fn launch(
    like: &CubeTensor,
    kernel: WgslKernel,
    workgroup_size: u32,
    workgroups: [usize; 2],
    buffers: Vec<Handle>,
) {
    assert!(
        workgroups.iter().all(|&w| w <= MAX_WORKGROUPS),
        "{} needs {workgroups:?} workgroups, more than WebGPU's {MAX_WORKGROUPS} per dimension",
        kernel.name
    );
    let bindings = buffers.into_iter().map(Handle::binding).collect();
    like.client.launch(
        Box::new(SourceKernel::new(kernel, CubeDim::new_1d(workgroup_size))),
        CubeCount::Static(workgroups[0].max(1) as u32, workgroups[1].max(1) as u32, 1),
        KernelArguments::new().with_buffers(bindings),
    );
}

pub(crate) fn params(like: &CubeTensor, values: &[u32]) -> Handle {
    like.client.create_from_slice(bytemuck::cast_slice(values))
}

pub(crate) fn output(like: &CubeTensor, shape: Shape, dtype: DType) -> CubeTensor {
    let handle = like
        .client
        .empty(shape.num_elements().max(1) * dtype.size());
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        handle,
        dtype,
    )
}

pub(crate) fn scratch(like: &CubeTensor, words: usize) -> Handle {
    like.client.empty(words.max(1) * 4)
}

/// Checks the dtypes the shaders are written for; anything else is a programming error.
pub(crate) fn expect_dtype(t: &CubeTensor, dtype: DType, what: &str) {
    assert_eq!(
        t.dtype, dtype,
        "{what} must be {dtype:?} for the WGSL kernels"
    );
}
