//! Initial values of a freshly built model's parameters, as the reference implementations
//! initialise them (timm's `_init_weights`, Mamba's `A_log`/`D`/`dt_proj`, RandFormer's frozen
//! softmax of uniform noise), chosen from each tensor's checkpoint name and shape.

use candle_core::{Device, Result, Tensor, D};
use rand::Rng;
use rand_distr::{Distribution, Normal};

/// Parameters that are frozen buffers in the reference: built once, never trained.
pub fn is_frozen(name: &str) -> bool {
    name.ends_with("random_matrix")
        || name.ends_with("running_mean")
        || name.ends_with("running_var")
}

pub use tokenmix_models::ConvInit;

/// The initial value of parameter `name` with `shape`.
pub fn initial_value(
    name: &str,
    shape: &[usize],
    conv_init: ConvInit,
    rng: &mut impl Rng,
    dev: &Device,
) -> Result<Tensor> {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let parent = name.rsplit('.').nth(1).unwrap_or("");
    let fill = |v: f32| Tensor::full(v, shape, dev);
    match leaf {
        "random_matrix" => {
            let n = shape.iter().product();
            let noise = Tensor::from_vec(uniform(n, 0.0, 1.0, rng), shape, dev)?;
            candle_nn::ops::softmax(&noise, D::Minus1)
        }
        "A_log" | "A_b_log" => s4d_real(shape, dev),
        "D" | "D_b" => fill(1.0),
        "token_weights" | "channel_weights" => last_one_hot(shape, dev),
        "running_mean" | "beta" => fill(0.0),
        "running_var" | "alpha" => fill(1.0),
        "ls1" | "ls2" => fill(0.1),
        "gamma" => fill(1e-6),
        "scale" if parent.starts_with("layer_scale") => fill(1e-5),
        "scale" => fill(1.0),
        "bias" if parent.starts_with("dt_proj") => dt_bias(shape, rng, dev),
        "weight" if parent.starts_with("dt_proj") => {
            let bound = (shape.last().copied().unwrap_or(1) as f32).powf(-0.5);
            let n = shape.iter().product();
            Tensor::from_vec(uniform(n, -bound, bound, rng), shape, dev)
        }
        "bias" => fill(0.0),
        "weight" if shape.len() <= 1 => fill(1.0),
        // A norm's gain stored with unit axes around its channels (EfficientViM's
        // LayerNorm1D / LayerNorm2D, `[1, C, 1]` / `[1, C, 1, 1]`).
        "weight" if name.contains("norm") && shape.iter().filter(|&&d| d != 1).count() <= 1 => {
            fill(1.0)
        }
        "weight" if shape.len() == 4 && conv_init == ConvInit::KaimingFanOut => {
            let fan_out = shape[0] * shape[2] * shape[3];
            let std = (2.0 / fan_out as f32).sqrt();
            let normal = Normal::new(0.0f32, std).map_err(candle_core::Error::wrap)?;
            let n = shape.iter().product();
            Tensor::from_vec((0..n).map(|_| normal.sample(rng)).collect(), shape, dev)
        }
        _ => trunc_normal(shape, 0.02, rng, dev),
    }
}

fn uniform(n: usize, lo: f32, hi: f32, rng: &mut impl Rng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// Normal(0, std) redrawn outside [-2, 2] (timm's `trunc_normal_(std=std)`, whose bounds are
/// absolute).
fn trunc_normal(shape: &[usize], std: f32, rng: &mut impl Rng, dev: &Device) -> Result<Tensor> {
    let normal = Normal::new(0.0f32, std).map_err(candle_core::Error::wrap)?;
    let n = shape.iter().product();
    let values = (0..n)
        .map(|_| loop {
            let v = normal.sample(rng);
            if v.abs() <= 2.0 {
                break v;
            }
        })
        .collect();
    Tensor::from_vec(values, shape, dev)
}

/// Mamba's `A_log`: `log(1..=N)` on every row of `(D, N)`.
fn s4d_real(shape: &[usize], dev: &Device) -> Result<Tensor> {
    let n = shape.last().copied().unwrap_or(1);
    let row: Vec<f32> = (1..=n).map(|i| (i as f32).ln()).collect();
    Tensor::from_vec(row, n, dev)?
        .broadcast_as(shape)?
        .contiguous()
}

/// Mamba's `dt_proj.bias`: the inverse softplus of step sizes log-uniform in [1e-3, 0.1].
fn dt_bias(shape: &[usize], rng: &mut impl Rng, dev: &Device) -> Result<Tensor> {
    let (lo, hi) = (1e-3f32.ln(), 0.1f32.ln());
    let n = shape.iter().product();
    let values = (0..n)
        .map(|_| {
            let dt = rng.random_range(lo..hi).exp().max(1e-4);
            dt + (-(-dt).exp_m1()).ln()
        })
        .collect();
    Tensor::from_vec(values, shape, dev)
}

/// Weights of a learned average of earlier outputs, starting on the latest one.
fn last_one_hot(shape: &[usize], dev: &Device) -> Result<Tensor> {
    let n = shape.iter().product::<usize>();
    let mut w = vec![0f32; n];
    if let Some(last) = w.last_mut() {
        *last = 1.0;
    }
    Tensor::from_vec(w, shape, dev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn value(name: &str, shape: &[usize]) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        initial_value(name, shape, ConvInit::TruncNormal, &mut rng, &Device::Cpu).unwrap()
    }

    #[test]
    fn norms_start_as_identity_and_weights_small() -> Result<()> {
        let w: Vec<f32> = value("stages.0.blocks.0.norm1.weight", &[8]).to_vec1()?;
        assert!(w.iter().all(|&x| x == 1.0));
        let b: Vec<f32> = value("head.fc.bias", &[8]).to_vec1()?;
        assert!(b.iter().all(|&x| x == 0.0));
        let fc = value("head.fc.weight", &[64, 32])
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!(fc.iter().all(|x| x.abs() <= 0.15));
        let std = (fc.iter().map(|x| x * x).sum::<f32>() / fc.len() as f32).sqrt();
        assert!((0.018..0.022).contains(&std), "std {std}");
        Ok(())
    }

    #[test]
    fn random_matrix_rows_are_distributions() -> Result<()> {
        let m = value("stages.2.blocks.0.token_mixer.random_matrix", &[5, 5]);
        for row in m.to_vec2::<f32>()? {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        assert!(is_frozen("stages.2.blocks.0.token_mixer.random_matrix"));
        Ok(())
    }

    #[test]
    fn mamba_step_sizes_fall_in_range() -> Result<()> {
        let bias: Vec<f32> = value("m.dt_proj.bias", &[64]).to_vec1()?;
        for b in bias {
            let dt = (b.exp()).ln_1p();
            assert!((0.9e-3..0.11).contains(&dt), "{dt}");
        }
        let a: Vec<Vec<f32>> = value("m.A_log", &[2, 3]).to_vec2()?;
        assert!((a[1][2] - 3f32.ln()).abs() < 1e-6);
        Ok(())
    }
}
