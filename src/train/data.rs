//! Image-folder datasets (`root/<split>/<class>/*.jpg|png`, classes in sorted order, as
//! torchvision's `ImageFolder`), timm's train augmentation (random resized crop, horizontal
//! flip) and eval preprocessing, and batching.

use std::path::{Path, PathBuf};

use crate::train::error::{bail, Context, Result};
use candle_core::{Device, Tensor};
use image::{imageops::FilterType, DynamicImage};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokenmix_models::preprocess::{decode_image, preprocess};
use tokenmix_models::PretrainedCfg;

/// Files with these extensions (any case) are images.
const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// The images of one split: `(path, class index)` pairs and the class names.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    /// Class names: the sub-directory names, sorted.
    pub classes: Vec<String>,
    /// Every image with its class index, in sorted path order.
    pub samples: Vec<(PathBuf, usize)>,
}

impl ImageFolder {
    /// Reads `dir/<class>/*`; fails on a missing or empty directory.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut classes: Vec<String> = read_dir_sorted(dir)?
            .into_iter()
            .filter(|p| p.is_dir())
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        classes.sort();
        if classes.is_empty() {
            bail!("{} has no class sub-directories", dir.display());
        }
        Self::open_with_classes(dir, &classes)
    }

    /// Reads `dir/<class>/*` for the given classes (a validation split takes the training
    /// split's classes, so indices agree); a class directory may be missing or empty, but the
    /// split may not be, and a directory of a class not in `classes` is an error.
    pub fn open_with_classes(dir: &Path, classes: &[String]) -> Result<Self> {
        for p in read_dir_sorted(dir)? {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            if p.is_dir() && !classes.iter().any(|c| Some(c) == name.as_ref()) {
                bail!(
                    "{} is a class the training split does not have",
                    p.display()
                );
            }
        }
        let mut samples = Vec::new();
        for (index, class) in classes.iter().enumerate() {
            let class_dir = dir.join(class);
            if !class_dir.is_dir() {
                continue;
            }
            for p in read_dir_sorted(&class_dir)? {
                if is_image(&p) {
                    samples.push((p, index));
                }
            }
        }
        if samples.is_empty() {
            bail!(
                "{} has no .jpg, .jpeg or .png images in its class directories",
                dir.display()
            );
        }
        Ok(Self {
            classes: classes.to_vec(),
            samples,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mut paths = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    paths.sort();
    Ok(paths)
}

fn is_image(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

/// timm's training augmentation: `RandomResizedCrop(scale, ratio)` to the input size, then a
/// horizontal flip with probability `hflip`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Range of the crop's area as a fraction of the image (timm: 0.08 to 1).
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio w/h (timm: 3/4 to 4/3).
    pub ratio: (f64, f64),
    /// Probability of a horizontal flip (timm: 0.5; 0 for data where left and right differ,
    /// such as digits).
    pub hflip: f64,
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: 0.5,
        }
    }
}

impl Augment {
    /// The crop `(x, y, w, h)` of a `width x height` image (torchvision's algorithm: ten tries
    /// at a random area and log-uniform ratio, then a center crop at the clamped ratio).
    pub fn crop_box(&self, width: u32, height: u32, rng: &mut impl Rng) -> (u32, u32, u32, u32) {
        let (wf, hf) = (width as f64, height as f64);
        let area = wf * hf;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * rng.random_range(self.scale.0..=self.scale.1);
            let ratio = rng.random_range(lr0..=lr1).exp();
            let w = (target * ratio).sqrt().round();
            let h = (target / ratio).sqrt().round();
            if w > 0.0 && h > 0.0 && w <= wf && h <= hf {
                let (w, h) = (w as u32, h as u32);
                let x = rng.random_range(0..=width - w);
                let y = rng.random_range(0..=height - h);
                return (x, y, w, h);
            }
        }
        let in_ratio = wf / hf;
        let (w, h) = if in_ratio < self.ratio.0 {
            (wf, (wf / self.ratio.0).round())
        } else if in_ratio > self.ratio.1 {
            ((hf * self.ratio.1).round(), hf)
        } else {
            (wf, hf)
        };
        let (w, h) = ((w as u32).max(1), (h as u32).max(1));
        ((width - w) / 2, (height - h) / 2, w, h)
    }

    /// The augmented, normalized `(C, H, W)` pixels of `img` for a model with `cfg`.
    pub fn apply(&self, img: &DynamicImage, cfg: &PretrainedCfg, rng: &mut impl Rng) -> Vec<f32> {
        let (th, tw) = cfg.image_size();
        let (x, y, w, h) = self.crop_box(img.width(), img.height(), rng);
        let mut out =
            img.crop_imm(x, y, w, h)
                .resize_exact(tw as u32, th as u32, FilterType::Triangle);
        if rng.random::<f64>() < self.hflip {
            out = out.fliph();
        }
        normalize(&out, cfg)
    }
}

/// `(C, H, W)` pixels of an image already at the input size, scaled to `[0, 1]` and
/// normalized with the config's mean and std.
fn normalize(img: &DynamicImage, cfg: &PretrainedCfg) -> Vec<f32> {
    let channels = cfg.input_size.first().copied().unwrap_or(3);
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = if channels == 1 {
        img.to_luma8().into_raw()
    } else {
        img.to_rgb8().into_raw()
    };
    let mut out = vec![0f32; channels * h * w];
    for c in 0..channels {
        let (m, s) = (cfg.mean[c] as f32, cfg.std[c] as f32);
        for (i, v) in out[c * h * w..(c + 1) * h * w].iter_mut().enumerate() {
            *v = (raw[i * channels + c] as f32 / 255.0 - m) / s;
        }
    }
    out
}

fn read_image(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    decode_image(&bytes)
        .map_err(|e| crate::train::error::TrainError::Invalid(format!("{}: {e}", path.display())))
}

/// A batch: images `(B, C, H, W)` as raw f32 and their labels.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(B, C, H, W)` row-major pixels.
    pub images: Vec<f32>,
    /// `(B, C, H, W)`.
    pub shape: (usize, usize, usize, usize),
    /// Class index of each image.
    pub labels: Vec<usize>,
}

impl Batch {
    /// The images as a tensor on `device`.
    pub fn tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_slice(&self.images, self.shape, device)
    }
}

/// Fails unless images can be fed to a model with `cfg`: 1 (grayscale) or 3 (RGB) channels,
/// each with a mean and a std.
pub fn check_channels(cfg: &PretrainedCfg) -> Result<()> {
    let c = cfg.input_size.first().copied().unwrap_or(0);
    if !(c == 1 || c == 3) || cfg.mean.len() != c || cfg.std.len() != c {
        bail!(
            "images are fed as 1 or 3 channels with a mean and std each; this model has {c} channels, {} means, {} stds",
            cfg.mean.len(),
            cfg.std.len()
        );
    }
    Ok(())
}

/// Loads `samples` augmented for training; sample `i` draws its augmentation from a generator
/// seeded from `(seed, i)`, so a batch is reproducible.
pub fn train_batch(
    samples: &[(PathBuf, usize)],
    augment: &Augment,
    cfg: &PretrainedCfg,
    seed: u64,
) -> Result<Batch> {
    check_channels(cfg)?;
    let pixels = samples
        .par_iter()
        .enumerate()
        .map(|(i, (path, _))| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                seed ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
            );
            Ok(augment.apply(&read_image(path)?, cfg, &mut rng))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(assemble(pixels, samples, cfg))
}

/// Loads `samples` with timm's eval preprocessing (resize, center crop, normalize).
pub fn eval_batch(samples: &[(PathBuf, usize)], cfg: &PretrainedCfg) -> Result<Batch> {
    check_channels(cfg)?;
    let pixels = samples
        .par_iter()
        .map(|(path, _)| {
            let t = preprocess(&read_image(path)?, cfg, &Device::Cpu)?;
            Ok(t.flatten_all()?.to_vec1::<f32>()?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(assemble(pixels, samples, cfg))
}

fn assemble(pixels: Vec<Vec<f32>>, samples: &[(PathBuf, usize)], cfg: &PretrainedCfg) -> Batch {
    let (h, w) = cfg.image_size();
    let c = cfg.input_size.first().copied().unwrap_or(3);
    Batch {
        images: pixels.concat(),
        shape: (samples.len(), c, h, w),
        labels: samples.iter().map(|(_, l)| *l).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_stay_inside_the_image_and_respect_the_area_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let aug = Augment::default();
        for (w, h) in [(32, 32), (640, 480), (7, 300), (1, 1)] {
            for _ in 0..200 {
                let (x, y, cw, ch) = aug.crop_box(w, h, &mut rng);
                assert!(cw >= 1 && ch >= 1 && x + cw <= w && y + ch <= h);
            }
        }
    }

    #[test]
    fn full_scale_unit_ratio_crop_is_the_whole_square_image() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let aug = Augment {
            scale: (1.0, 1.0),
            ratio: (1.0, 1.0),
            hflip: 0.0,
        };
        assert_eq!(aug.crop_box(48, 48, &mut rng), (0, 0, 48, 48));
    }
}
