//! timm's pretrained configuration: what input a checkpoint expects and how to preprocess it.

use serde::{Deserialize, Serialize};

/// The subset of timm's `pretrained_cfg` that inference needs. Unknown keys of a
/// `config.json`'s `pretrained_cfg` are ignored; missing ones take timm's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PretrainedCfg {
    /// `[channels, height, width]` of the evaluation input.
    pub input_size: Vec<usize>,
    /// Resize filter: `bicubic`, `bilinear`, `nearest` or `lanczos`.
    pub interpolation: String,
    /// Fraction of the resized image kept by the center crop.
    pub crop_pct: f64,
    /// Per-channel mean subtracted after scaling pixels to `[0, 1]`.
    pub mean: Vec<f64>,
    /// Per-channel standard deviation divided by after the mean.
    pub std: Vec<f64>,
    /// Classifier width the weights were trained with.
    pub num_classes: usize,
}

/// ImageNet mean used by most timm models.
pub const IMAGENET_DEFAULT_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet std used by most timm models.
pub const IMAGENET_DEFAULT_STD: [f64; 3] = [0.229, 0.224, 0.225];

impl Default for PretrainedCfg {
    fn default() -> Self {
        Self {
            input_size: vec![3, 224, 224],
            interpolation: "bicubic".into(),
            crop_pct: 0.875,
            mean: IMAGENET_DEFAULT_MEAN.to_vec(),
            std: IMAGENET_DEFAULT_STD.to_vec(),
            num_classes: 1000,
        }
    }
}

impl PretrainedCfg {
    /// timm's MetaFormer defaults (224², bicubic, ImageNet mean/std) with `crop_pct`.
    pub fn metaformer(crop_pct: f64) -> Self {
        Self {
            crop_pct,
            ..Self::default()
        }
    }

    /// 224², bicubic, mean and std 0.5 (Inception-style, as timm's MLP-Mixer and gMLP) with
    /// `crop_pct`.
    pub fn inception(crop_pct: f64) -> Self {
        Self {
            crop_pct,
            mean: vec![0.5; 3],
            std: vec![0.5; 3],
            ..Self::default()
        }
    }

    /// ImageNet mean/std, bicubic, at `size`² with `crop_pct`.
    pub fn square(size: usize, crop_pct: f64) -> Self {
        Self {
            input_size: vec![3, size, size],
            crop_pct,
            ..Self::default()
        }
    }

    /// `(height, width)` of the model input.
    pub fn image_size(&self) -> (usize, usize) {
        match self.input_size.as_slice() {
            [_, h, w] => (*h, *w),
            _ => (224, 224),
        }
    }

    /// Sets the input's `(height, width)`, keeping its channel count (3 when unset).
    pub fn set_image_size(&mut self, (h, w): (usize, usize)) {
        let c = self.input_size.first().copied().unwrap_or(3);
        self.input_size = vec![c, h, w];
    }
}
