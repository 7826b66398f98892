//! Forward cost of sequence token mixers against the sequence length: one mixer on `(1, N, 64)`
//! tokens (random weights, f32, this machine's CPU), `N` from 512 to 16k, printed as a markdown
//! table of milliseconds per forward pass and the ratio to the 512-token time.
//!
//! Mixers: JustDense's dense matrix (`dense`, 2 heads of `N x N`), linear attention
//! (`linear_attention`, LinFusion's, 2 heads of 32), the unidirectional Mamba selective scan
//! (`mamba`, state 16, expansion 2), Hydra's quasiseparable mixer (`hydra`, its defaults), PoNet's
//! multi-granularity pooling (`ponet`, 2 heads of 32, 32 segments) and softmax attention
//! (`attention`, 2 heads of 32). A length whose predicted time (the last
//! measured time scaled by the mixer's growth, quadratic for `dense` and `attention`) exceeds
//! 10 s, or whose dense `N x N` buffers would exceed 8 GiB, is skipped with the reason.
//!
//! With `--plot FILE` (`.svg` or `.png`) it also draws the times against `N` (log axis), with a
//! second panel of microseconds per token, flat for a mixer linear in `N`.
//!
//! `cargo run --release --example cost_vs_length [MIXER ...] [--plot FILE]`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use tokenmix::mixers::attention::AttentionConfig;
use tokenmix::mixers::dense::DenseMixerConfig;
use tokenmix::mixers::hydra::HydraConfig;
use tokenmix::mixers::linear_attention::LinearAttentionConfig;
use tokenmix::mixers::ponet::PoNetMixerConfig;
use tokenmix::mixers::ssm::MambaConfig;
use tokenmix::mixers::{MixerConfig, TokenMixer};

#[allow(dead_code)]
#[path = "../src/plot.rs"]
mod plot;

const WIDTH: usize = 64;
const LENGTHS: [usize; 6] = [512, 1024, 2048, 4096, 8192, 16384];
const MAX_SECONDS: f64 = 10.0;
const MAX_BYTES: f64 = 8.0 * (1u64 << 30) as f64;

/// A mixer family at length `n`, and whether its cost grows quadratically in `n`.
struct Case {
    name: &'static str,
    quadratic: bool,
    config: fn(usize) -> MixerConfig,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "dense",
            quadratic: true,
            config: |n| {
                MixerConfig::new(DenseMixerConfig {
                    num_tokens: n,
                    heads: 2,
                })
            },
        },
        Case {
            name: "linear_attention",
            quadratic: false,
            config: |_| MixerConfig::new(LinearAttentionConfig::default()),
        },
        Case {
            name: "mamba",
            quadratic: false,
            config: |_| {
                MixerConfig::new(MambaConfig {
                    bidirectional: false,
                    ..MambaConfig::default()
                })
            },
        },
        Case {
            name: "hydra",
            quadratic: false,
            config: |_| MixerConfig::new(HydraConfig::default()),
        },
        Case {
            name: "ponet",
            quadratic: false,
            config: |_| MixerConfig::new(PoNetMixerConfig::default()),
        },
        Case {
            name: "attention",
            quadratic: true,
            config: |_| MixerConfig::new(AttentionConfig::default()),
        },
    ]
}

/// `cfg` built for `WIDTH` channels with every weight drawn from `N(0, 0.02²)` (norm-like
/// vectors near one), as a trained model's magnitudes.
fn random_mixer(cfg: &MixerConfig, device: &Device) -> candle_core::Result<Box<dyn TokenMixer>> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    cfg.build(WIDTH, vb.clone())?;
    for (_, var) in varmap.data().lock().unwrap().iter() {
        var.set(&Tensor::randn(0f32, 0.02, var.shape(), device)?)?;
    }
    cfg.build(WIDTH, vb)
}

/// Median milliseconds of a forward pass after one warm-up (at least 3 runs, up to 1 s).
fn time_ms(mixer: &dyn TokenMixer, x: &Tensor) -> candle_core::Result<f64> {
    mixer.forward(x)?;
    let mut runs = Vec::new();
    let start = Instant::now();
    while runs.len() < 3 || (start.elapsed().as_secs_f64() < 1.0 && runs.len() < 20) {
        let t = Instant::now();
        mixer.forward(x)?;
        runs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    runs.sort_by(f64::total_cmp);
    Ok(runs[runs.len() / 2])
}

/// Bytes of the `(heads, N, N)` buffers the quadratic mixers hold or make.
fn quadratic_bytes(name: &str, n: usize) -> f64 {
    match name {
        // The matrices, the product's output copy and the gradient-free input copies.
        "dense" => 2.0 * (n * n) as f64 * 4.0,
        // Logits and probabilities of 2 heads.
        "attention" => 2.0 * 2.0 * (n * n) as f64 * 4.0,
        _ => 0.0,
    }
}

/// Two panels of the measured `(N, ms)` per mixer: milliseconds, and microseconds per token.
fn figure(measured: &[(&str, Vec<(f64, f64)>)]) -> plot::Figure {
    let lines = |per_token: bool| {
        measured
            .iter()
            .map(|(name, points)| plot::Series {
                name: name.to_string(),
                points: points
                    .iter()
                    .map(|&(n, ms)| (n, if per_token { 1e3 * ms / n } else { ms }))
                    .collect(),
            })
            .collect()
    };
    let panel = |title: &str, y_label: &str, per_token: bool| plot::Panel {
        title: title.to_string(),
        x_label: format!("sequence length N (tokens of width {WIDTH}, log scale)"),
        y_label: y_label.to_string(),
        log_x: true,
        kind: plot::PanelKind::Lines(lines(per_token)),
    };
    plot::Figure {
        title: format!(
            "Token mixers: forward cost against sequence length ({} CPU threads, f32)",
            rayon::current_num_threads()
        ),
        panels: vec![
            panel("time per forward", "ms", false),
            panel("time per token", "microseconds per token", true),
        ],
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut wanted: Vec<String> = std::env::args().skip(1).collect();
    let plot_path = match wanted.iter().position(|a| a == "--plot") {
        Some(i) if i + 1 < wanted.len() => {
            let path = std::path::PathBuf::from(wanted.remove(i + 1));
            wanted.remove(i);
            Some(path)
        }
        Some(_) => return Err("--plot needs a file name".into()),
        None => None,
    };
    let mut measured = Vec::new();
    let device = Device::Cpu;
    println!(
        "Forward time of one mixer on (1, N, {WIDTH}) tokens, f32, {} CPU threads \
         (ms per forward; x = ratio to N = 512)\n",
        rayon::current_num_threads()
    );
    let header: Vec<String> = LENGTHS.iter().map(|n| format!("N = {n}")).collect();
    println!("| mixer | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(LENGTHS.len()));
    let mut notes = Vec::new();
    for case in cases() {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == case.name) {
            continue;
        }
        let mut cells = Vec::new();
        let mut points = Vec::new();
        let mut first: Option<f64> = None;
        let mut last: Option<(usize, f64)> = None;
        for &n in &LENGTHS {
            let growth = |m: usize| {
                let r = n as f64 / m as f64;
                if case.quadratic {
                    r * r
                } else {
                    r
                }
            };
            let predicted = last.map(|(m, ms)| ms * growth(m) / 1e3);
            let bytes = quadratic_bytes(case.name, n);
            if let Some(s) = predicted.filter(|&s| s > MAX_SECONDS) {
                cells.push("skipped".to_string());
                notes.push(format!(
                    "{} at N = {n}: predicted {s:.0} s per forward (over {MAX_SECONDS} s)",
                    case.name
                ));
                continue;
            }
            if bytes > MAX_BYTES {
                cells.push("skipped".to_string());
                notes.push(format!(
                    "{} at N = {n}: {:.1} GiB of N x N buffers (over 8 GiB)",
                    case.name,
                    bytes / (1u64 << 30) as f64
                ));
                continue;
            }
            let mixer = random_mixer(&(case.config)(n), &device)?;
            let x = Tensor::randn(0f32, 1.0, (1, n, WIDTH), &device)?;
            let ms = time_ms(mixer.as_ref(), &x)?;
            let base = *first.get_or_insert(ms);
            cells.push(format!("{ms:.2} ({:.1}x)", ms / base));
            points.push((n as f64, ms));
            last = Some((n, ms));
        }
        println!("| {} | {} |", case.name, cells.join(" | "));
        measured.push((case.name, points));
    }
    for note in notes {
        println!("\n* skipped: {note}");
    }
    if let Some(path) = plot_path {
        figure(&measured)
            .save(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        println!("\nplot: {}", path.display());
    }
    Ok(())
}
