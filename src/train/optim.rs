//! AdamW with decoupled weight decay applied only where timm applies it: not to norms, biases,
//! scales or other 1-D parameters, nor to position embeddings and mixing weights.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters (PyTorch's defaults but the learning rate and decay).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Step size (the schedule overrides it every step).
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the second-moment root.
    pub eps: f64,
    /// Decoupled weight decay of the decayed parameters.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
        }
    }
}

/// Whether timm would decay parameter `name` of `rank` dimensions.
pub fn decays(name: &str, rank: usize) -> bool {
    const NO_DECAY: [&str; 5] = [
        "bias",
        "pos_embed",
        "token_weights",
        "channel_weights",
        "complex_weight",
    ];
    rank > 1 && !NO_DECAY.iter().any(|s| name.ends_with(s))
}

#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    decay: bool,
    m: Tensor,
    v: Tensor,
}

/// AdamW over named parameters; the moments are kept per parameter and can be saved and
/// restored by name.
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    steps: usize,
}

impl AdamW {
    /// An optimizer over `params` (name, variable), decaying those [`decays`] picks.
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                let zeros = var.zeros_like()?;
                Ok(Slot {
                    decay: decays(&name, var.rank()),
                    m: zeros.clone(),
                    v: zeros,
                    name,
                    var,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg,
            slots,
            steps: 0,
        })
    }

    /// Sets the step size of the next steps.
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// The current step size.
    pub fn lr(&self) -> f64 {
        self.cfg.lr
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Names of the decayed parameters.
    pub fn decayed(&self) -> impl Iterator<Item = &str> {
        self.slots
            .iter()
            .filter(|s| s.decay)
            .map(|s| s.name.as_str())
    }

    /// One AdamW step from the gradients in `grads`; parameters without a gradient keep their
    /// value and moments.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        let AdamWConfig {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.cfg;
        let bias1 = 1.0 - beta1.powi(self.steps as i32);
        let bias2 = 1.0 - beta2.powi(self.steps as i32);
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            // Gradients carry the graph they were computed in; detached, the moments do not
            // keep every step's activations alive.
            let g = g.detach().to_dtype(DType::F32)?;
            slot.m = ((&slot.m * beta1)? + (&g * (1.0 - beta1))?)?;
            slot.v = ((&slot.v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let update = ((&slot.m / bias1)? / ((&slot.v / bias2)?.sqrt()? + eps)?)?;
            let theta = slot.var.as_tensor().detach();
            let theta = if slot.decay {
                (theta * (1.0 - lr * weight_decay))?
            } else {
                theta
            };
            slot.var.set(&(theta - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`m.<param>`, `v.<param>`), for checkpoints.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("m.{}", s.name), s.m.clone());
            out.insert(format!("v.{}", s.name), s.v.clone());
        }
        out
    }

    /// Restores moments saved by [`state`](Self::state) after `steps` steps; every parameter's
    /// moments must be present with its shape.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, steps: usize) -> Result<()> {
        for s in &mut self.slots {
            for (key, slot) in [("m", &mut s.m), ("v", &mut s.v)] {
                let name = format!("{key}.{}", s.name);
                let t = state.get(&name).ok_or_else(|| {
                    candle_core::Error::msg(format!("optimizer state has no {name}"))
                })?;
                if t.dims() != s.var.dims() {
                    candle_core::bail!(
                        "optimizer state {name} has shape {:?}, the parameter {:?}",
                        t.dims(),
                        s.var.dims()
                    )
                }
                *slot = t.to_dtype(DType::F32)?.to_device(s.var.device())?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn weight_decay_skips_norms_biases_and_scales() {
        assert!(decays("stages.0.blocks.0.mlp.fc1.weight", 2));
        assert!(decays("stem.conv.weight", 4));
        assert!(!decays("stages.0.blocks.0.norm1.weight", 1));
        assert!(!decays("head.fc.bias", 1));
        assert!(!decays("stages.2.blocks.0.res_scale1.scale", 1));
        assert!(!decays("pos_embed", 3));
    }

    #[test]
    fn first_step_moves_each_weight_by_lr_against_its_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::new(&[[1f32, -2.0], [3.0, 0.5]], &dev)?;
        let b = Var::new(&[1f32, 1.0], &dev)?;
        let cfg = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![("w".into(), w.clone()), ("b".into(), b.clone())], cfg)?;
        let loss = ((w.as_tensor().sum_all()? * 2.0)? - b.as_tensor().sum_all()?)?;
        opt.step(&loss.backward()?)?;
        let w1: Vec<Vec<f32>> = w.as_tensor().to_vec2()?;
        let want = |x: f32| x * (1.0 - 0.05) - 0.1;
        assert!((w1[0][0] - want(1.0)).abs() < 1e-5 && (w1[1][0] - want(3.0)).abs() < 1e-5);
        let b1: Vec<f32> = b.as_tensor().to_vec1()?;
        assert!(
            (b1[0] - 1.1).abs() < 1e-5,
            "bias is not decayed and moves up: {b1:?}"
        );
        Ok(())
    }

    #[test]
    fn state_round_trips() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::new(&[1f32, 2.0, 3.0], &dev)?;
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default())?;
        opt.step(&w.as_tensor().sqr()?.sum_all()?.backward()?)?;
        let state = opt.state();
        let mut other = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default())?;
        other.load_state(&state, opt.steps())?;
        assert_eq!(other.steps(), 1);
        let m: Vec<f32> = other.state()["m.w"].to_vec1()?;
        assert_eq!(m, state["m.w"].to_vec1::<f32>()?);
        assert!(other.load_state(&HashMap::new(), 1).is_err());
        Ok(())
    }
}
