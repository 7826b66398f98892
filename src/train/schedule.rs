//! Learning-rate schedule per optimizer step: linear warmup, then one cosine decay over the
//! remaining steps (timm's `CosineLRScheduler` with `warmup_prefix=True`, `t_in_epochs=False`).

use serde::{Deserialize, Serialize};

/// Linear warmup from `warmup_lr` to `base_lr` over `warmup_steps`, then cosine decay to
/// `min_lr` at `total_steps`; constant `min_lr` afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WarmupCosine {
    /// Peak learning rate, reached at the end of warmup.
    pub base_lr: f64,
    /// Learning rate at step 0.
    pub warmup_lr: f64,
    /// Final learning rate.
    pub min_lr: f64,
    /// Steps of linear warmup.
    pub warmup_steps: usize,
    /// Steps of the whole run.
    pub total_steps: usize,
}

impl WarmupCosine {
    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            let t = step as f64 / self.warmup_steps as f64;
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * t;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps);
        if span == 0 || step >= self.total_steps {
            return self.min_lr;
        }
        let t = (step - self.warmup_steps) as f64 / span as f64;
        self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> WarmupCosine {
        WarmupCosine {
            base_lr: 1e-3,
            warmup_lr: 1e-6,
            min_lr: 1e-5,
            warmup_steps: 10,
            total_steps: 110,
        }
    }

    #[test]
    fn matches_its_formula() {
        let s = schedule();
        assert_eq!(s.lr(0), 1e-6);
        assert!((s.lr(5) - (1e-6 + (1e-3 - 1e-6) * 0.5)).abs() < 1e-15);
        assert!((s.lr(10) - 1e-3).abs() < 1e-15);
        for step in 10..=110 {
            let t = (step - 10) as f64 / 100.0;
            let want = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1.0 + (std::f64::consts::PI * t).cos());
            assert!((s.lr(step) - want).abs() < 1e-15, "step {step}");
        }
        assert!((s.lr(60) - (1e-3 + 1e-5) / 2.0).abs() < 1e-12);
        assert_eq!(s.lr(500), 1e-5);
    }

    #[test]
    fn never_rises_after_warmup() {
        let s = schedule();
        for step in 10..200 {
            assert!(s.lr(step + 1) <= s.lr(step));
        }
    }

    #[test]
    fn no_warmup_starts_at_the_peak() {
        let s = WarmupCosine {
            warmup_steps: 0,
            ..schedule()
        };
        assert_eq!(s.lr(0), 1e-3);
    }
}
