//! tokenmix's reading of the Dynamic Spectrum Mixer (Hu & Yu, "Dynamic Spectrum Mixer for Visual
//! Recognition", arXiv 2309.06721). The paper released no code, and its method section was not
//! available to tokenmix: everything here beyond its abstract — token mixing in the frequency
//! domain of a discrete cosine transform, with input-dependent weights that select the
//! informative frequency bands — is tokenmix's own choice, modelled on DFFormer's dynamic
//! filter (arXiv 2303.03932) with the FFT replaced by the DCT. The parity fixture only shows that
//! this Rust matches the same equations written in PyTorch (scripts/make_wave2b_fixtures.py).
//!
//! Registered as `dynamic_spectrum`; the `tokenmix_dsm_*` models use it in every MetaFormer stage.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::layers::{separable_product, Derived, Pointwise};
use crate::{check_num_tokens, config_error, MixerLayout, MixerSpec, TokenMixer};

/// The orthonormal DCT-II matrix `[n, n]`: `D[k, i] = sqrt(2 / n) c_k cos(pi (2i + 1) k / 2n)`
/// with `c_0 = 1 / sqrt(2)`, `c_k = 1` otherwise; its transpose is the inverse (DCT-III).
pub fn dct_matrix(n: usize, device: &Device) -> Result<Tensor> {
    let scale = (2.0 / n as f64).sqrt();
    let m: Vec<f32> = (0..n)
        .flat_map(|k| {
            let c = if k == 0 { std::f64::consts::FRAC_1_SQRT_2 } else { 1.0 };
            (0..n).map(move |i| {
                let angle = std::f64::consts::PI * (2 * i + 1) as f64 * k as f64 / (2 * n) as f64;
                (scale * c * angle.cos()) as f32
            })
        })
        .collect();
    Tensor::from_vec(m, (n, n), device)
}

/// The dynamic spectrum mixer on a channel-last map `(B, H, W, C)`:
/// `u = GELU(pwconv1(x))` (`C -> C'`), its orthonormal 2-D DCT-II `U = D_H u D_Wᵀ` per channel,
/// band weights `F = Σ_k r_k ⊙ banks_k` (`banks` `[K, H, W, C']`, `r = softmax_K(reweight(mean_HW
/// x))` with `reweight` `C -> C/4 -> K C'`, ReLU between), then `pwconv2(D_Hᵀ (U ⊙ F) D_W)`
/// (`C' -> C`). The banks fix the grid. Checkpoint names (tokenmix's own: the paper has no
/// code): `pwconv1`, `reweight.fc1`, `reweight.fc2`, `banks`, `pwconv2`.
#[derive(Debug, Clone)]
pub struct DynamicSpectrum {
    pwconv1: Pointwise,
    reweight_fc1: Pointwise,
    reweight_fc2: Pointwise,
    /// `[K, H, W, C']`.
    banks: Tensor,
    pwconv2: Pointwise,
    /// The DCT matrices of the height and the width, built on the first call.
    dct: Derived<(Tensor, Tensor)>,
    cfg: DynamicSpectrumConfig,
    mid: usize,
}

impl DynamicSpectrum {
    /// Loads the mixer for `dim` channels.
    pub fn new(cfg: &DynamicSpectrumConfig, dim: usize, vb: VarBuilder) -> Result<Self> {
        cfg.validate(dim)?;
        let (mid, hidden) = (cfg.mid(dim), cfg.hidden(dim));
        let (h, w) = cfg.size;
        let layout = MixerLayout::ChannelsLast;
        let linear = |i, o, bias, vb| Pointwise::from_linear(i, o, bias, layout, vb);
        Ok(Self {
            pwconv1: linear(dim, mid, false, vb.pp("pwconv1"))?,
            reweight_fc1: linear(dim, hidden, true, vb.pp("reweight").pp("fc1"))?,
            reweight_fc2: linear(hidden, cfg.num_filters * mid, true, vb.pp("reweight").pp("fc2"))?,
            banks: vb.get((cfg.num_filters, h, w, mid), "banks")?,
            pwconv2: linear(mid, dim, false, vb.pp("pwconv2"))?,
            dct: Derived::default(),
            cfg: *cfg,
            mid,
        })
    }
}

impl TokenMixer for DynamicSpectrum {
    fn name(&self) -> &'static str {
        "dynamic_spectrum"
    }

    fn layout(&self) -> MixerLayout {
        MixerLayout::ChannelsLast
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, _) = x.dims4()?;
        if (h, w) != self.cfg.size {
            return Err(config_error(
                "dynamic_spectrum",
                format!(
                    "its spectral weights were built for a {}x{} map, got {h}x{w}",
                    self.cfg.size.0, self.cfg.size.1
                ),
            ));
        }
        let k = self.cfg.num_filters;
        let pooled = crate::layers::in_f32(x, |x| x.mean(2)?.mean(1))?;
        let r = self
            .reweight_fc2
            .forward(&self.reweight_fc1.forward(&pooled)?.relu()?)?
            .reshape((b, k, 1, self.mid))?;
        let r = crate::layers::in_f32(&r, |r| candle_nn::ops::softmax(r, 1))?;
        let banks = self.banks.reshape((k, h * w, self.mid))?;
        let weights = r
            .broadcast_mul(&banks.unsqueeze(0)?)?
            .sum(1)?
            .reshape((b, h, w, self.mid))?;
        let u = tokenmix_kernels::gelu(&self.pwconv1.forward(x)?)?;
        let (rows, cols) = self.dct.get(false, || {
            let matrix = |n| dct_matrix(n, x.device())?.to_dtype(x.dtype());
            Ok((matrix(h)?, matrix(w)?))
        })?;
        let spectrum = separable_product(&u, &rows, &cols)?;
        let mixed = (spectrum * weights)?;
        let back = separable_product(&mixed, &rows.t()?, &cols.t()?)?;
        self.pwconv2.forward(&back)
    }
}

/// Config of the [`DynamicSpectrum`] mixer; JSON `{"type": "dynamic_spectrum", "size": [14, 14],
/// "expansion_ratio": 2.0, "num_filters": 4, "reweight_ratio": 0.25}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicSpectrumConfig {
    /// The grid `(height, width)` the spectral weights are built for (fitted to the stage by
    /// [`MixerSpec::for_grid`]).
    pub size: (usize, usize),
    /// Width of the spectral branch as a multiple of the channels.
    pub expansion_ratio: f64,
    /// Number of weight banks `K` mixed per image.
    pub num_filters: usize,
    /// Hidden width of the bank-mixing MLP as a multiple of the channels.
    pub reweight_ratio: f64,
}

impl Default for DynamicSpectrumConfig {
    /// DFFormer's defaults at a 14x14 grid: expansion 2, 4 banks, reweighting ratio 1/4.
    fn default() -> Self {
        Self {
            size: (14, 14),
            expansion_ratio: 2.0,
            num_filters: 4,
            reweight_ratio: 0.25,
        }
    }
}

impl DynamicSpectrumConfig {
    fn mid(&self, dim: usize) -> usize {
        (self.expansion_ratio * dim as f64) as usize
    }

    fn hidden(&self, dim: usize) -> usize {
        ((self.reweight_ratio * dim as f64) as usize).max(1)
    }
}

impl MixerSpec for DynamicSpectrumConfig {
    fn kind(&self) -> &'static str {
        "dynamic_spectrum"
    }

    fn validate(&self, dim: usize) -> Result<()> {
        let fail = |msg: String| Err(config_error("dynamic_spectrum", msg));
        crate::check_ratio("dynamic_spectrum", "expansion_ratio", self.expansion_ratio, dim)?;
        if !(self.reweight_ratio > 0.0 && self.reweight_ratio <= 64.0) {
            return fail(format!("reweight_ratio must be in (0, 64], got {}", self.reweight_ratio));
        }
        if !(1..=64).contains(&self.num_filters) {
            return fail(format!("num_filters must be in 1..=64, got {}", self.num_filters));
        }
        let (h, w) = self.size;
        if h == 0 || w == 0 || h > 1024 || w > 1024 {
            return fail(format!("size must be in 1..=1024 per side, got {h}x{w}"));
        }
        check_num_tokens("dynamic_spectrum", h * w)
    }

    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        Ok(Box::new(DynamicSpectrum::new(self, dim, vb)?))
    }

    /// The two projections, the bank MLP and the four DCT products (as dense `n x n`
    /// matrices: `H + W` per position and channel, each way).
    fn macs(&self, dim: usize, _h: usize, _w: usize) -> u64 {
        let (h, w) = self.size;
        let n = (h * w) as u64;
        let (c, mid) = (dim as u64, self.mid(dim) as u64);
        let hidden = self.hidden(dim) as u64;
        let k = self.num_filters as u64;
        2 * n * c * mid + c * hidden + hidden * k * mid + 2 * n * mid * (h + w) as u64
            + k * n * mid
    }

    fn for_grid(&self, h: usize, w: usize) -> Option<Self> {
        Some(Self {
            size: (h, w),
            ..*self
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dct_matrix_is_orthonormal() {
        for n in [1, 2, 7, 14] {
            let d = dct_matrix(n, &Device::Cpu).unwrap();
            let eye = d.matmul(&d.t().unwrap()).unwrap();
            let want = Tensor::eye(n, candle_core::DType::F32, &Device::Cpu).unwrap();
            let err: f32 = (eye - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(err < 1e-5, "n = {n}: {err}");
        }
    }
}
