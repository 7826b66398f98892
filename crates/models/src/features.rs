//! The backbone surface for detection and segmentation heads, after timm's: which feature maps a
//! model produces ([`FeatureInfo`]), which of them to take ([`Indices`]) and in which layout
//! ([`FeatureFormat`]).
//!
//! Every [`ImageModel`](crate::ImageModel) lists its feature maps in
//! [`feature_info`](crate::ImageModel::feature_info): one per stage for pyramid models
//! (MetaFormer, MambaOut, MS-MLP, RaftMLP, AFFNet), one per block for isotropic models (the
//! MLP-Mixer family, GFNet, MambaMixer), all at the patch stride.
//! [`forward_intermediates`](crate::ImageModel::forward_intermediates) returns some of them, and
//! [`prune_intermediate_layers`](crate::ImageModel::prune_intermediate_layers) drops what comes
//! after the last one wanted.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// One feature map a backbone produces, as timm's `feature_info` entries describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureInfo {
    /// Channels of the map.
    pub num_chs: usize,
    /// Stride of the map relative to the input: an `H x W` input whose sides it divides gives
    /// a map of `H / reduction x W / reduction` (other sides are rounded as each family's
    /// convolutions or resizing round them).
    pub reduction: usize,
    /// The checkpoint prefix of the stage or block producing the map, e.g. `stages.2` or
    /// `blocks.11`.
    pub module: String,
}

impl FeatureInfo {
    /// A feature map of `num_chs` channels at stride `reduction`, made by `module`.
    pub fn new(num_chs: usize, reduction: usize, module: impl Into<String>) -> Self {
        Self {
            num_chs,
            reduction,
            module: module.into(),
        }
    }
}

/// Which feature maps to take, as timm's `indices` argument: all of them, the last `n`, or a list
/// of indices into [`feature_info`](crate::ImageModel::feature_info) (negative ones count from the
/// end, `-1` being the last).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Indices {
    /// Every feature map (timm's `None`).
    #[default]
    All,
    /// The last `n` feature maps, `n` in `1..=len` (timm's int).
    Last(usize),
    /// These feature maps, each in `-len..len` (timm's list).
    List(Vec<i64>),
}

impl Indices {
    /// The feature maps taken out of `len`, as ascending indices, each once: the order in which
    /// the model produces them, whatever the order of a [`List`](Self::List) (as timm returns
    /// them). Out-of-range indices are an error naming the valid range.
    pub fn resolve(&self, len: usize) -> Result<Vec<usize>> {
        let mut take = match self {
            Self::All => (0..len).collect::<Vec<_>>(),
            Self::Last(n) => {
                if *n == 0 || *n > len {
                    candle_core::bail!(
                        "last-n ({n}) is out of range (1 to {len}): the model has {len} feature maps"
                    )
                }
                (len - n..len).collect()
            }
            Self::List(list) => {
                if list.is_empty() {
                    candle_core::bail!("no feature index given: the model has {len} feature maps")
                }
                let n = len as i64;
                list.iter()
                    .map(|&i| {
                        let abs = if i < 0 { n + i } else { i };
                        if (0..n).contains(&abs) {
                            Ok(abs as usize)
                        } else {
                            Err(candle_core::Error::msg(format!(
                                "feature index {i} is out of range ({} to {}) for a model with \
                                 {len} feature maps",
                                -n,
                                n - 1
                            )))
                        }
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        if take.is_empty() {
            candle_core::bail!("the model has no feature maps")
        }
        take.sort_unstable();
        take.dedup();
        Ok(take)
    }
}

impl From<usize> for Indices {
    /// The last `n` feature maps.
    fn from(n: usize) -> Self {
        Self::Last(n)
    }
}

impl From<Vec<i64>> for Indices {
    /// These feature maps.
    fn from(list: Vec<i64>) -> Self {
        Self::List(list)
    }
}

impl From<&[i64]> for Indices {
    /// These feature maps.
    fn from(list: &[i64]) -> Self {
        Self::List(list.to_vec())
    }
}

/// The layout of the maps [`forward_intermediates`](crate::ImageModel::forward_intermediates)
/// returns (timm's `output_fmt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FeatureFormat {
    /// Channel-first `(B, C, H, W)` (timm's `NCHW`).
    #[default]
    Nchw,
    /// Channel-last `(B, H, W, C)` (timm's `NHWC`).
    Nhwc,
}

impl FeatureFormat {
    /// `map`, given channel-first, in this layout (a strided view: no copy is made).
    pub fn from_nchw(self, map: Tensor) -> Result<Tensor> {
        match self {
            Self::Nchw => Ok(map),
            Self::Nhwc => map.permute((0, 2, 3, 1)),
        }
    }
}

/// Fails unless `take` holds ascending, distinct indices below `len`, as [`Indices::resolve`]
/// gives them; returns the last one (the deepest map needed).
pub(crate) fn check_take(take: &[usize], len: usize) -> Result<usize> {
    let ascending = take.windows(2).all(|w| w[0] < w[1]);
    match take.last() {
        Some(&last) if ascending && last < len => Ok(last),
        _ => candle_core::bail!(
            "feature indices {take:?} must be ascending, distinct and in 0..{len} \
             (use Indices::resolve)"
        ),
    }
}

/// Resolves `indices` over `layers` (stages or blocks) and drops every layer after the last one
/// taken, for [`ImageModel::prune_intermediate_layers`](crate::ImageModel::prune_intermediate_layers);
/// returns the taken indices and how many layers are kept.
pub(crate) fn truncate_after_last<T>(
    layers: &mut Vec<T>,
    indices: &Indices,
) -> Result<(Vec<usize>, usize)> {
    let take = indices.resolve(layers.len())?;
    let kept = take[take.len() - 1] + 1;
    layers.truncate(kept);
    Ok((take, kept))
}

/// The message of [`ImageModel::reset_classifier`](crate::ImageModel::reset_classifier) on a
/// pruned model.
pub(crate) fn pruned_error<T>() -> Result<T> {
    candle_core::bail!(
        "prune_intermediate_layers removed this model's head; build the model again to give it a \
         classifier"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_resolve_as_timm() {
        assert_eq!(Indices::All.resolve(4).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(Indices::Last(2).resolve(4).unwrap(), vec![2, 3]);
        assert_eq!(
            Indices::List(vec![-1, 0, 2, 0]).resolve(4).unwrap(),
            vec![0, 2, 3]
        );
        let err = Indices::Last(5).resolve(4).unwrap_err().to_string();
        assert!(err.contains("last-n (5) is out of range (1 to 4)"), "{err}");
        let err = Indices::Last(0).resolve(4).unwrap_err().to_string();
        assert!(err.contains("(1 to 4)"), "{err}");
        let err = Indices::List(vec![4]).resolve(4).unwrap_err().to_string();
        assert!(
            err.contains("feature index 4 is out of range (-4 to 3)"),
            "{err}"
        );
        let err = Indices::List(vec![-5]).resolve(4).unwrap_err().to_string();
        assert!(err.contains("feature index -5 is out of range"), "{err}");
        let err = Indices::List(vec![]).resolve(4).unwrap_err().to_string();
        assert!(err.contains("no feature index given"), "{err}");
    }

    #[test]
    fn take_lists_are_checked() {
        assert_eq!(check_take(&[0, 2], 3).unwrap(), 2);
        for bad in [&[2, 0][..], &[1, 1], &[3], &[]] {
            let err = check_take(bad, 3).unwrap_err().to_string();
            let want = format!("feature indices {bad:?} must be ascending, distinct and in 0..3");
            assert!(err.contains(&want), "{err}");
        }
    }
}
