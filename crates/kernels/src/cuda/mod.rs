//! The CUDA side of the fused ops: the PTX built from `src/cuda/*.cu` (see `build.rs`), loaded
//! through candle's custom-kernel API, and launch helpers. Kernels compute in f32 and take f32,
//! f16 and bf16 tensors; every op's `cuda_fwd` lives next to its `cpu_fwd`.

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDevice, Map1, Map2, Map3, WrapErr, S};
use candle_core::{CudaStorage, DType, Layout, Result, WithDType};

use crate::sizes::{grid_x, thread_blocks};
pub(crate) use crate::sizes::{int, product};
use crate::KernelError;

/// One `.cu` file's PTX and the name candle caches its module under.
pub(crate) struct Module {
    name: &'static str,
    ptx: &'static str,
}

macro_rules! module {
    ($const:ident, $file:literal) => {
        pub(crate) const $const: Module = Module {
            name: concat!("tokenmix_", $file),
            ptx: include_str!(concat!(env!("OUT_DIR"), "/", $file, ".ptx")),
        };
    };
}

module!(ACTIVATION, "activation");
module!(DEPTHWISE, "depthwise");
module!(NEIGHBORHOOD, "neighborhood");
module!(NORM, "norm");
module!(POOL, "pool");
module!(SCAN, "scan");
module!(SHIFT, "shift");
module!(SPECTRAL, "spectral");
module!(SSD, "ssd");
module!(WAVELET, "wavelet");

/// Threads per block of the element-wise and grid-stride kernels.
pub(crate) const BLOCK: u32 = 256;

/// Kernel `{kernel}_{f32|f16|bf16}` of `module` for element type `T`.
pub(crate) fn func<T: WithDType>(
    dev: &CudaDevice,
    module: &Module,
    kernel: &str,
) -> Result<CudaFunction> {
    if !matches!(T::DTYPE, DType::F32 | DType::F16 | DType::BF16) {
        return Err(KernelError::Param {
            op: "cuda",
            msg: format!("{kernel}: no kernel for {:?}", T::DTYPE),
        }
        .into());
    }
    let name = format!("{kernel}_{}", T::DTYPE.as_str());
    Ok(dev
        .get_or_load_custom_func(&name, module.name, module.ptx)?
        .into_cuda_function())
}

/// The elements of a contiguous operand `what` of `op`, or [`KernelError::NotContiguous`].
pub(crate) fn view<'a, T>(
    s: &'a CudaSlice<T>,
    l: &Layout,
    op: &'static str,
    what: &'static str,
) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.slice(a..b)),
        None => Err(KernelError::NotContiguous { op, what }.into()),
    }
}

/// A grid-stride launch over `n` elements.
pub(crate) fn grid(n: usize) -> LaunchConfig {
    // At most 2^16 blocks, so the conversion is exact.
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 1 << 16) as u32;
    config(blocks, BLOCK)
}

/// `blocks` blocks of `threads` threads, no dynamic shared memory; more blocks than a grid's x
/// dimension holds are refused.
pub(crate) fn blocks_of(blocks: usize, threads: u32, op: &'static str) -> Result<LaunchConfig> {
    Ok(config(grid_x(blocks, op)?, threads))
}

/// One thread per item for `items` items in blocks of `threads`, for a kernel whose 32-bit flat
/// thread index must not pass `max_index` (see [`thread_blocks`]).
pub(crate) fn threads_for(
    items: usize,
    threads: u32,
    max_index: u32,
    op: &'static str,
) -> Result<LaunchConfig> {
    Ok(config(
        thread_blocks(items, threads, max_index, op)?,
        threads,
    ))
}

fn config(blocks: u32, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A storage on `like`'s device holding `slice`.
pub(crate) fn wrap(slice: S, like: &CudaStorage) -> CudaStorage {
    CudaStorage {
        slice,
        device: like.device.clone(),
    }
}

/// An element-wise kernel `kernel(size_t n, const T* in..., T* out)` over the element count of
/// its first operand; the others are read whole (same length or scalars).
pub(crate) struct Elementwise {
    /// The module holding the kernel.
    pub module: &'static Module,
    /// The kernel name without its dtype suffix.
    pub kernel: &'static str,
    /// The op, for error messages.
    pub op: &'static str,
}

impl Elementwise {
    fn run<T: DeviceRepr + WithDType>(
        &self,
        dev: &CudaDevice,
        inputs: &[CudaView<'_, T>],
    ) -> Result<CudaSlice<T>> {
        let n = inputs.first().map_or(0, |v| v.len());
        let f = func::<T>(dev, self.module, self.kernel)?;
        // SAFETY: the kernel writes all n elements.
        let out = unsafe { dev.alloc::<T>(n) }?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&n);
        for v in inputs {
            b.arg(v);
        }
        b.arg(&out);
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { b.launch(grid(n)) }.w()?;
        Ok(out)
    }
}

impl Map1 for Elementwise {
    fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
        &self,
        s: &CudaSlice<T>,
        dev: &CudaDevice,
        l: &Layout,
    ) -> Result<CudaSlice<T>> {
        self.run(dev, &[view(s, l, self.op, "input")?])
    }
}

impl Map2 for Elementwise {
    fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
        &self,
        s1: &CudaSlice<T>,
        l1: &Layout,
        s2: &CudaSlice<T>,
        l2: &Layout,
        dev: &CudaDevice,
    ) -> Result<CudaSlice<T>> {
        let ins = [
            view(s1, l1, self.op, "input")?,
            view(s2, l2, self.op, "gradient")?,
        ];
        self.run(dev, &ins)
    }
}

impl Map3 for Elementwise {
    fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
        &self,
        s1: &CudaSlice<T>,
        l1: &Layout,
        s2: &CudaSlice<T>,
        l2: &Layout,
        s3: &CudaSlice<T>,
        l3: &Layout,
        dev: &CudaDevice,
    ) -> Result<CudaSlice<T>> {
        let ins = [
            view(s1, l1, self.op, "input")?,
            view(s2, l2, self.op, "second operand")?,
            view(s3, l3, self.op, "third operand")?,
        ];
        self.run(dev, &ins)
    }
}
