//! Launch sizes of the CUDA kernels, computed in `usize` with overflow checks. Compiled without
//! the `cuda` feature too, so that the checks are tested on every machine.

use candle_core::Result;

use crate::KernelError;

fn refuse(op: &'static str, msg: String) -> candle_core::Error {
    KernelError::Param { op, msg }.into()
}

/// An `i32` kernel argument; sizes beyond `i32::MAX` are refused.
pub(crate) fn int(v: usize, op: &'static str) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| refuse(op, format!("size {v} exceeds the kernels' 32-bit indices")))
}

/// The product of `dims` (an element or thread count), or an error naming `op` where it
/// overflows `usize`.
pub(crate) fn product(dims: &[usize], op: &'static str) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |p, &d| p.checked_mul(d))
        .ok_or_else(|| refuse(op, format!("the size {dims:?} overflows")))
}

/// The most blocks a launch's grid x dimension holds (`2^31 - 1`).
const MAX_GRID_X: usize = i32::MAX as usize;

/// `blocks` as a grid's x dimension; more than it holds are refused.
pub(crate) fn grid_x(blocks: usize, op: &'static str) -> Result<u32> {
    match u32::try_from(blocks) {
        Ok(b) if blocks <= MAX_GRID_X => Ok(b),
        _ => Err(refuse(
            op,
            format!("a launch of {blocks} blocks exceeds CUDA's 2^31 - 1"),
        )),
    }
}

/// Blocks of `threads` (at least one block) running one thread per item for `items` items, for
/// a kernel that computes its flat index `blockIdx.x * blockDim.x + threadIdx.x` in 32 bits:
/// the index of the last block's last thread must not exceed `max_index` (`u32::MAX` where the
/// kernel keeps it unsigned, `i32::MAX` where it stores it in an `int`), or it would wrap.
pub(crate) fn thread_blocks(
    items: usize,
    threads: u32,
    max_index: u32,
    op: &'static str,
) -> Result<u32> {
    let blocks = items.div_ceil(threads.max(1) as usize).max(1);
    let last = product(&[blocks, threads as usize], op)?.saturating_sub(1);
    if last > max_index as usize {
        return Err(refuse(
            op,
            format!("{items} threads exceed the kernel's 32-bit index ({max_index} at most)"),
        ));
    }
    grid_x(blocks, op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked_not_wrapped() {
        assert_eq!(product(&[3, 5, 7], "t").unwrap(), 105);
        assert_eq!(product(&[], "t").unwrap(), 1);
        let e = product(&[1 << 40, 1 << 40], "t").unwrap_err().to_string();
        assert!(
            e.contains("t: the size [1099511627776, 1099511627776] overflows"),
            "{e}"
        );
        assert_eq!(int(i32::MAX as usize, "t").unwrap(), i32::MAX);
        assert!(int(i32::MAX as usize + 1, "t").is_err());
        assert_eq!(grid_x(MAX_GRID_X, "t").unwrap(), i32::MAX as u32);
        let e = grid_x(MAX_GRID_X + 1, "t").unwrap_err().to_string();
        assert!(e.contains("2147483648 blocks exceeds"), "{e}");
        assert!(grid_x(usize::MAX, "t").is_err());
    }

    #[test]
    fn thread_indices_stay_in_32_bits() {
        assert_eq!(thread_blocks(0, 128, u32::MAX, "t").unwrap(), 1);
        assert_eq!(thread_blocks(129, 128, u32::MAX, "t").unwrap(), 2);
        // 2^31 threads end at index 2^31 - 1: the largest an int holds.
        let max = i32::MAX as u32;
        assert_eq!(thread_blocks(1 << 31, 128, max, "t").unwrap(), 1 << 24);
        // One more item needs a block whose last index is past it.
        let e = thread_blocks((1 << 31) + 1, 128, max, "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("32-bit index"), "{e}");
        // Unsigned indices reach 2^32 - 1 (2^32 threads), then wrap.
        assert!(thread_blocks(1 << 32, 256, u32::MAX, "t").is_ok());
        assert!(thread_blocks((1 << 32) + 1, 256, u32::MAX, "t").is_err());
        assert!(thread_blocks(usize::MAX, 256, u32::MAX, "t").is_err());
    }
}
