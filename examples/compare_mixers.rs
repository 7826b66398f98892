//! One MetaFormer backbone (PoolFormer-v2 S12: its stem, depths, widths, GroupNorm blocks with
//! StarReLU MLPs and res scales, 224², random weights) with only its token mixer swapped, across
//! every registered mixer family, printing parameters, MACs and batch-1 latency on this machine:
//! the mixer trade-off in one table, like for like.
//!
//! `cargo run --release --example compare_mixers [KIND ...]` (default: every registered mixer,
//! each at its registered default, fitted to each stage's grid).

use std::time::Instant;

use candle_core::{Device, Tensor};
use tokenmix::mixers::{registered_mixers, MixerConfig};
use tokenmix::models::checkpoint::{param_count, random_model};
use tokenmix::models::{ArchConfig, MetaFormerConfig};

const DEPTHS: [usize; 4] = [2, 2, 6, 2];
const DIMS: [usize; 4] = [64, 128, 320, 512];

/// PoolFormer-v2 S12 with `mixer` in every stage, fitted to the stage grids of a 224² input.
fn backbone(mixer: &MixerConfig) -> ArchConfig {
    let mut cfg = MetaFormerConfig::poolformer_v2(DEPTHS, DIMS);
    cfg.token_mixers = vec![mixer.clone(); DEPTHS.len()];
    cfg.set_random_mixing_size((224, 224));
    ArchConfig::new(cfg)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let device = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, 3, 224, 224), &device)?;
    println!("Same block in every row (PoolFormer-v2 S12 at 224², random weights); only the token");
    println!("mixer differs, each at its registered default config.");
    println!(
        "{:<26} {:>10} {:>8} {:>10}",
        "mixer", "params(M)", "GMACs", "b1 ms"
    );
    for reg in registered_mixers() {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == reg.kind) {
            continue;
        }
        let arch = backbone(&reg.default_config());
        let model = random_model(&arch, &device)?;
        model.forward(&x)?;
        let start = Instant::now();
        model.forward(&x)?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        println!(
            "{:<26} {:>10.1} {:>8.2} {ms:>10.1}",
            reg.kind,
            param_count(&arch)? as f64 / 1e6,
            arch.macs(224, 224) as f64 / 1e9
        );
    }
    Ok(())
}
