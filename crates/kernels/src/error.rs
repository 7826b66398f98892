//! The error type of tokenmix-kernels. Ops return `candle_core::Result` (candle's custom-op
//! traits require it); their failures are a [`KernelError`] wrapped in `candle_core::Error`,
//! which callers can downcast.

/// What went wrong in a fused op.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// An operand has a shape the op cannot take.
    #[error("{op}: {what} has shape {found:?}, expected {expected}")]
    Shape {
        /// The op.
        op: &'static str,
        /// Which operand.
        what: &'static str,
        /// What the op needs.
        expected: String,
        /// What it got.
        found: Vec<usize>,
    },
    /// An operand's memory is not contiguous (the public wrappers make it so).
    #[error("{op}: {what} must be contiguous")]
    NotContiguous {
        /// The op.
        op: &'static str,
        /// Which operand.
        what: &'static str,
    },
    /// A hyper-parameter is out of range.
    #[error("{op}: {msg}")]
    Param {
        /// The op.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
}

/// The f32 elements of a contiguous operand `what` of `op`, or [`KernelError::NotContiguous`].
pub(crate) fn contiguous_f32<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
    op: &'static str,
    what: &'static str,
) -> candle_core::Result<&'a [f32]> {
    let Some((a, b)) = layout.contiguous_offsets() else {
        return Err(KernelError::NotContiguous { op, what }.into());
    };
    Ok(&storage.as_slice::<f32>()?[a..b])
}

impl From<KernelError> for candle_core::Error {
    fn from(e: KernelError) -> Self {
        candle_core::Error::wrap(e)
    }
}

/// [`KernelError::Shape`] for operand `what` of `op`, whose shape `found` is not `expected`.
pub(crate) fn shape_error_of(
    op: &'static str,
    what: &'static str,
    expected: String,
    found: &[usize],
) -> candle_core::Error {
    KernelError::Shape {
        op,
        what,
        expected,
        found: found.to_vec(),
    }
    .into()
}
