//! One MetaFormer backbone (PoolFormer-S12 widths and depths, 224², random weights) with its
//! token mixer swapped across every family tokenmix has, printing parameters, MACs and batch-1
//! latency on this machine: the mixer trade-off in one table.
//!
//! `cargo run --release --example compare_mixers`

use std::time::Instant;

use candle_core::{Device, Tensor};
use tokenmix::mixers::layers::ActKind;
use tokenmix::mixers::MixerConfig;
use tokenmix::models::checkpoint::{param_count, random_model};
use tokenmix::models::{ArchConfig, MetaFormerConfig};

const DEPTHS: [usize; 4] = [2, 2, 6, 2];
const DIMS: [usize; 4] = [64, 128, 320, 512];
/// Token grid of each stage at 224².
const GRIDS: [usize; 4] = [56, 28, 14, 7];

/// The mixer of one stage (grid `g` x `g`), per family.
fn mixer(family: &str, g: usize) -> MixerConfig {
    let n = g * g;
    match family {
        "identity" => MixerConfig::Identity,
        "pooling" => MixerConfig::pooling(),
        "random" => MixerConfig::RandomMixing { num_tokens: n },
        "sepconv" => MixerConfig::sepconv(),
        "attention" => MixerConfig::attention(),
        "token_mlp" => MixerConfig::TokenMlp {
            num_tokens: n,
            hidden: n / 2,
            act: ActKind::Gelu,
            glu: false,
        },
        "linear_tokens" => MixerConfig::LinearTokens { num_tokens: n },
        "spatial_gating" => MixerConfig::SpatialGating { num_tokens: n },
        "global_filter" => MixerConfig::GlobalFilter {
            height: g,
            width: g,
        },
        "adaptive_filter" => MixerConfig::AdaptiveFrequencyFilter {
            num_blocks: 8,
            sparsity_threshold: 0.01,
            act: ActKind::Silu,
        },
        "mix_shift" => MixerConfig::MixShift {
            shift_dist: vec![-2, -1, 0, 1, 2],
            mix_size: vec![1, 3, 3, 5, 7],
        },
        "gated_conv" => MixerConfig::GatedConv {
            expansion_ratio: 8.0 / 3.0,
            kernel_size: 7,
            conv_ratio: 1.0,
        },
        "raft" => MixerConfig::RaftTokenMixing {
            raft_size: 2,
            height: g,
            width: g,
            expansion: 2,
        },
        _ => MixerConfig::Mamba {
            d_state: 16,
            d_conv: 4,
            expand: 2,
            dt_rank: None,
            bidirectional: true,
            divide_out: true,
        },
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let families = [
        "identity",
        "pooling",
        "random",
        "sepconv",
        "attention",
        "token_mlp",
        "linear_tokens",
        "spatial_gating",
        "global_filter",
        "adaptive_filter",
        "mix_shift",
        "gated_conv",
        "raft",
        "mamba",
    ];
    let device = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, 3, 224, 224), &device)?;
    println!(
        "{:<16} {:>10} {:>8} {:>10}",
        "mixer", "params(M)", "GMACs", "b1 ms"
    );
    for family in families {
        let mut cfg = MetaFormerConfig::poolformer_v2(DEPTHS, DIMS);
        cfg.token_mixers = GRIDS.iter().map(|&g| mixer(family, g)).collect();
        let arch = ArchConfig::new(cfg);
        let model = random_model(&arch, &device)?;
        model.forward(&x)?;
        let start = Instant::now();
        model.forward(&x)?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        println!(
            "{family:<16} {:>10.1} {:>8.2} {ms:>10.1}",
            param_count(&arch)? as f64 / 1e6,
            arch.macs(224, 224) as f64 / 1e9
        );
    }
    Ok(())
}
