//! Mixup and CutMix on a batch, with label smoothing (timm's `Mixup`, batch mode), and the
//! soft-target cross-entropy they train with.

use candle_core::{Result, Tensor, D};
use rand::Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

/// Mixup / CutMix settings. With both alphas positive, each batch uses CutMix with probability
/// `switch_prob`, else Mixup; a batch is mixed at all with probability `prob`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MixConfig {
    /// Mixup's Beta(alpha, alpha); 0 turns Mixup off.
    pub mixup_alpha: f64,
    /// CutMix's Beta(alpha, alpha); 0 turns CutMix off.
    pub cutmix_alpha: f64,
    /// Probability that a batch is mixed.
    pub prob: f64,
    /// Probability of CutMix rather than Mixup when both are on.
    pub switch_prob: f64,
    /// Label smoothing of the targets.
    pub label_smoothing: f64,
}

impl Default for MixConfig {
    /// No mixing, label smoothing 0.1.
    fn default() -> Self {
        Self {
            mixup_alpha: 0.0,
            cutmix_alpha: 0.0,
            prob: 1.0,
            switch_prob: 0.5,
            label_smoothing: 0.1,
        }
    }
}

/// How a batch was mixed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mix {
    /// Not mixed.
    None,
    /// Blended with the reversed batch; the weight of the original.
    Mixup(f64),
    /// A box `(y0, y1, x0, x1)` pasted from the reversed batch; the area left of the original.
    CutMix((usize, usize, usize, usize), f64),
}

impl Mix {
    /// Weight of each sample's own label in its target.
    pub fn lam(&self) -> f64 {
        match *self {
            Mix::None => 1.0,
            Mix::Mixup(lam) | Mix::CutMix(_, lam) => lam,
        }
    }
}

impl MixConfig {
    /// Whether any mixing is configured.
    pub fn enabled(&self) -> bool {
        self.prob > 0.0 && (self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0)
    }

    /// Draws how to mix a batch of `h x w` images.
    pub fn draw(&self, h: usize, w: usize, rng: &mut impl Rng) -> Mix {
        if !self.enabled() || rng.random::<f64>() >= self.prob {
            return Mix::None;
        }
        let cutmix = match (self.mixup_alpha > 0.0, self.cutmix_alpha > 0.0) {
            (true, true) => rng.random::<f64>() < self.switch_prob,
            (false, true) => true,
            _ => false,
        };
        let alpha = if cutmix {
            self.cutmix_alpha
        } else {
            self.mixup_alpha
        };
        let lam = match Beta::new(alpha, alpha) {
            Ok(beta) => beta.sample(rng),
            Err(_) => 1.0,
        };
        if cutmix {
            cutmix_box(h, w, lam, rng)
        } else {
            Mix::Mixup(lam)
        }
    }

    /// Mixes `images` (`(B, C, H, W)` row-major) in place with the batch in reverse order and
    /// returns the soft targets `(B, classes)`, each row summing to 1.
    pub fn apply(
        &self,
        images: &mut [f32],
        shape: (usize, usize, usize, usize),
        labels: &[usize],
        classes: usize,
        rng: &mut impl Rng,
    ) -> (Vec<f32>, Mix) {
        let (_, _, h, w) = shape;
        let mix = self.draw(h, w, rng);
        mix_images(images, shape, mix);
        (
            soft_targets(labels, classes, mix.lam(), self.label_smoothing),
            mix,
        )
    }
}

/// A CutMix box for `lam` (its side ratio `sqrt(1 - lam)`, centre uniform, clipped to the
/// image), with `lam` corrected to the area actually kept.
fn cutmix_box(h: usize, w: usize, lam: f64, rng: &mut impl Rng) -> Mix {
    let ratio = (1.0 - lam).max(0.0).sqrt();
    let (cut_h, cut_w) = ((h as f64 * ratio) as usize, (w as f64 * ratio) as usize);
    let (cy, cx) = (rng.random_range(0..h), rng.random_range(0..w));
    let y0 = cy.saturating_sub(cut_h / 2);
    let y1 = (cy + cut_h / 2).min(h);
    let x0 = cx.saturating_sub(cut_w / 2);
    let x1 = (cx + cut_w / 2).min(w);
    let kept = 1.0 - ((y1 - y0) * (x1 - x0)) as f64 / (h * w) as f64;
    Mix::CutMix((y0, y1, x0, x1), kept)
}

fn mix_images(images: &mut [f32], (b, c, h, w): (usize, usize, usize, usize), mix: Mix) {
    if matches!(mix, Mix::None) {
        return;
    }
    let plane = h * w;
    let sample = c * plane;
    let original = images.to_vec();
    let other = |i: usize| &original[(b - 1 - i) * sample..(b - i) * sample];
    match mix {
        Mix::None => {}
        Mix::Mixup(lam) => {
            let (lam, rest) = (lam as f32, (1.0 - lam) as f32);
            for (i, dst) in images.chunks_mut(sample).enumerate() {
                for (d, &o) in dst.iter_mut().zip(other(i)) {
                    *d = *d * lam + o * rest;
                }
            }
        }
        Mix::CutMix((y0, y1, x0, x1), _) => {
            for (i, dst) in images.chunks_mut(sample).enumerate() {
                let src = other(i);
                for ch in 0..c {
                    for y in y0..y1 {
                        let row = ch * plane + y * w;
                        dst[row + x0..row + x1].copy_from_slice(&src[row + x0..row + x1]);
                    }
                }
            }
        }
    }
}

/// `lam * smooth(onehot(labels)) + (1 - lam) * smooth(onehot(reversed labels))`, `(B, classes)`;
/// smoothing puts `smoothing / classes` on every class and the rest on the label.
pub fn soft_targets(labels: &[usize], classes: usize, lam: f64, smoothing: f64) -> Vec<f32> {
    let off = smoothing / classes as f64;
    let on = 1.0 - smoothing + off;
    let b = labels.len();
    let mut t = vec![off as f32; b * classes];
    for (i, row) in t.chunks_mut(classes).enumerate() {
        row[labels[i]] += ((on - off) * lam) as f32;
        row[labels[b - 1 - i]] += ((on - off) * (1.0 - lam)) as f32;
    }
    t
}

/// Cross-entropy of `logits` `(B, K)` against soft `targets` `(B, K)`, averaged over the batch.
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    (targets * logp)?.sum(D::Minus1)?.neg()?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn both() -> MixConfig {
        MixConfig {
            mixup_alpha: 0.8,
            cutmix_alpha: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn targets_sum_to_one_for_every_mix() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let labels = [0, 3, 3, 9, 1];
        let (mut kinds, shape) = ((0, 0), (5, 2, 7, 9));
        for _ in 0..200 {
            let mut img = vec![1.0; 5 * 2 * 7 * 9];
            let (t, mix) = both().apply(&mut img, shape, &labels, 10, &mut rng);
            for row in t.chunks(10) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
                assert!(row.iter().all(|&p| p > 0.0));
            }
            match mix {
                Mix::Mixup(_) => kinds.0 += 1,
                Mix::CutMix(..) => kinds.1 += 1,
                Mix::None => unreachable!("prob is 1"),
            }
            assert!((0.0..=1.0).contains(&mix.lam()));
        }
        assert!(kinds.0 > 50 && kinds.1 > 50, "{kinds:?}");
    }

    #[test]
    fn cutmix_lam_is_the_area_kept() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let cfg = MixConfig {
            cutmix_alpha: 1.0,
            ..Default::default()
        };
        for _ in 0..50 {
            let (b, c, h, w) = (2, 1, 6, 10);
            let mut img: Vec<f32> = (0..b * c * h * w)
                .map(|i| (i / (c * h * w)) as f32)
                .collect();
            let (_, mix) = cfg.apply(&mut img, (b, c, h, w), &[0, 1], 2, &mut rng);
            let own = img[..c * h * w].iter().filter(|&&v| v == 0.0).count();
            assert!((own as f64 / (c * h * w) as f64 - mix.lam()).abs() < 1e-9);
        }
    }

    #[test]
    fn mixup_blends_with_the_reversed_batch() {
        let mut img = vec![0.0, 0.0, 1.0, 1.0];
        mix_images(&mut img, (2, 1, 1, 2), Mix::Mixup(0.25));
        assert_eq!(img, vec![0.75, 0.75, 0.25, 0.25]);
    }

    #[test]
    fn smoothing_without_mixing() {
        let t = soft_targets(&[1, 0], 4, 1.0, 0.1);
        assert!((t[1] - 0.925).abs() < 1e-6 && (t[0] - 0.025).abs() < 1e-6);
        assert!((t[4] - 0.925).abs() < 1e-6);
    }

    #[test]
    fn cross_entropy_of_a_confident_right_answer_is_small() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let logits = Tensor::new(&[[10f32, 0.0], [0.0, 10.0]], &dev)?;
        let targets = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev)?;
        let loss = soft_cross_entropy(&logits, &targets)?.to_scalar::<f32>()?;
        assert!(loss < 1e-3 && loss > 0.0);
        let wrong = Tensor::new(&[[0f32, 1.0], [1.0, 0.0]], &dev)?;
        assert!(soft_cross_entropy(&logits, &wrong)?.to_scalar::<f32>()? > 9.0);
        Ok(())
    }
}
