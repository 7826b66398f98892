//! Runtime dispatch of the CPU kernels' inner loops to AVX2 + FMA code.
//!
//! The kernels are written as plain loops over slices that LLVM vectorizes. Built for the
//! default `x86-64` target, those loops get 128-bit SSE2 vectors; [`dispatch!`] compiles a loop a
//! second time with AVX2 and FMA enabled (256-bit vectors) and picks that copy when the CPU
//! has them, so a default build runs wide vectors without `-C target-cpu=native`. The two copies
//! compute the same arithmetic (Rust never contracts `a * b + c` into a fused multiply-add), so
//! results do not depend on the CPU.

/// Whether this CPU runs AVX2 and FMA instructions (x86-64-v3), detected once.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Defines `fn $name(args) -> ret` that calls `$body` (an `#[inline(always)]` function with
/// the same arguments) compiled with AVX2 + FMA when the CPU has them, and as built otherwise.
macro_rules! dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:path) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if $crate::simd::has_avx2_fma() {
                    // SAFETY: the CPU supports the features `wide` was compiled for.
                    return unsafe { wide($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

pub(crate) use dispatch;
