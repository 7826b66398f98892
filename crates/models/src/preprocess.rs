//! timm's evaluation preprocessing: resize, center crop, normalize.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::imageops::FilterType;
use image::DynamicImage;

use crate::{Error, PretrainedCfg, Result};

/// Largest image side decoded.
pub const MAX_SIDE: u32 = 16_384;
/// Most pixels decoded (a 10000 x 10000 image), to refuse decompression bombs before decoding.
pub const MAX_PIXELS: u64 = 100_000_000;

fn filter(name: &str) -> Result<FilterType> {
    Ok(match name {
        "bicubic" => FilterType::CatmullRom,
        "bilinear" => FilterType::Triangle,
        "nearest" => FilterType::Nearest,
        "lanczos" => FilterType::Lanczos3,
        other => {
            return Err(Error::config(
                "pretrained_cfg",
                format!(
                    "unsupported interpolation '{other}' (bicubic, bilinear, nearest, lanczos)"
                ),
            ))
        }
    })
}

/// Size after timm's eval `Resize`: for a square target, the shorter side becomes
/// `floor(size / crop_pct)` and the longer keeps the aspect ratio (torchvision's rounding);
/// otherwise each side becomes `floor(side / crop_pct)`.
pub fn resize_dims(width: u32, height: u32, target: (usize, usize), crop_pct: f64) -> (u32, u32) {
    let (th, tw) = target;
    let scale = |n: usize| (n as f64 / crop_pct).floor() as u32;
    if th != tw {
        return (scale(tw), scale(th));
    }
    let short = scale(th);
    if width <= height {
        (
            short,
            (short as u64 * height as u64 / width.max(1) as u64) as u32,
        )
    } else {
        (
            (short as u64 * width as u64 / height.max(1) as u64) as u32,
            short,
        )
    }
}

/// Turns an image into a normalized `(C, H, W)` f32 tensor as timm's eval transform does:
/// resize (see [`resize_dims`]) with the configured filter, center crop to the input size,
/// scale to `[0, 1]`, subtract `mean`, divide by `std`. Images are converted to RGB (or to
/// grayscale for one-channel models).
pub fn preprocess(img: &DynamicImage, cfg: &PretrainedCfg, device: &Device) -> Result<Tensor> {
    let (th, tw) = cfg.image_size();
    let channels = cfg.input_size.first().copied().unwrap_or(3);
    if !(channels == 1 || channels == 3) || cfg.mean.len() != channels || cfg.std.len() != channels
    {
        return Err(Error::config(
            "pretrained_cfg",
            format!(
                "need 1 or 3 channels with as many mean/std values, got {} channels, {} means, {} stds",
                channels,
                cfg.mean.len(),
                cfg.std.len()
            ),
        ));
    }
    if !(cfg.crop_pct > 0.0 && cfg.crop_pct <= 1.0) || th == 0 || tw == 0 {
        return Err(Error::config(
            "pretrained_cfg",
            "crop_pct must be in (0, 1] and the input size positive",
        ));
    }
    let (rw, rh) = resize_dims(img.width(), img.height(), (th, tw), cfg.crop_pct);
    let resized = img.resize_exact(
        rw.max(tw as u32),
        rh.max(th as u32),
        filter(&cfg.interpolation)?,
    );
    // torchvision's center crop rounds half-pixel offsets with Python's round (half to even).
    let left = ((resized.width() as f64 - tw as f64) / 2.0).round_ties_even() as u32;
    let top = ((resized.height() as f64 - th as f64) / 2.0).round_ties_even() as u32;
    let cropped = resized.crop_imm(left, top, tw as u32, th as u32);
    let data: Vec<u8> = if channels == 3 {
        cropped.to_rgb8().into_raw()
    } else {
        cropped.to_luma8().into_raw()
    };
    let x = Tensor::from_vec(data, (th, tw, channels), device)?
        .permute((2, 0, 1))?
        .to_dtype(candle_core::DType::F32)?;
    let mean = Tensor::new(
        cfg.mean.iter().map(|&m| m as f32).collect::<Vec<_>>(),
        device,
    )?
    .reshape((channels, 1, 1))?;
    let std = Tensor::new(
        cfg.std.iter().map(|&s| s as f32).collect::<Vec<_>>(),
        device,
    )?
    .reshape((channels, 1, 1))?;
    Ok((x / 255.0)?.broadcast_sub(&mean)?.broadcast_div(&std)?)
}

/// Decodes the image file at `path` (format detected from its content) and preprocesses it
/// with [`preprocess`].
pub fn load_image(path: &Path, cfg: &PretrainedCfg, device: &Device) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let img = decode_image(&bytes).map_err(|msg| Error::Image {
        path: path.to_path_buf(),
        msg,
    })?;
    preprocess(&img, cfg, device)
}

/// Decodes an encoded image (JPEG or PNG, detected from the content). Images with a side of 0
/// or over [`MAX_SIDE`] pixels, or more than [`MAX_PIXELS`] pixels, are refused from their
/// header, before any pixel is decoded.
pub fn decode_image(bytes: &[u8]) -> std::result::Result<DynamicImage, String> {
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())
    };
    let (w, h) = reader()?.into_dimensions().map_err(|e| e.to_string())?;
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE || w as u64 * h as u64 > MAX_PIXELS {
        return Err(format!(
            "image is {w}x{h} pixels; tokenmix decodes images with sides in 1..={MAX_SIDE} and \
             at most {MAX_PIXELS} pixels"
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 16);
    let mut reader = reader()?;
    reader.limits(limits);
    reader.decode().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_keeps_aspect_for_square_targets() {
        assert_eq!(resize_dims(640, 480, (224, 224), 0.9), (330, 248));
        assert_eq!(resize_dims(480, 640, (224, 224), 1.0), (224, 298));
        assert_eq!(resize_dims(100, 100, (224, 160), 1.0), (160, 224));
    }

    #[test]
    fn preprocess_yields_normalized_crop() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            300,
            200,
            image::Rgb([255, 0, 128]),
        ));
        let cfg = PretrainedCfg::metaformer(0.9);
        let x = preprocess(&img, &cfg, &Device::Cpu).unwrap();
        assert_eq!(x.dims(), &[3, 224, 224]);
        let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let red = (1.0 - 0.485) / 0.229;
        assert!((v[0] - red as f32).abs() < 1e-4);
        let blue = (128.0 / 255.0 - 0.406) / 0.225;
        assert!((v[2 * 224 * 224 + 5000] - blue as f32).abs() < 1e-4);
    }
}
