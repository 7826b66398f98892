//! The `tokenmix` command line: list and inspect the zoo, run and classify with timm
//! checkpoints, and benchmark the token mixers on this machine.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokenmix::models::checkpoint::{expected_tensors, random_model};
use tokenmix::models::hub::load_from_hub_cache;
use tokenmix::models::preprocess::load_image;
use tokenmix::models::{list_models, load_model_dir, load_weights, model_entry, LoadedModel};

#[derive(Parser)]
#[command(
    name = "tokenmix",
    version,
    about = "A model zoo of vision token mixers on candle"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List zoo models whose name matches PATTERN (glob with * and ?, else substring).
    List {
        /// Pattern such as `caformer_*` or `s12`.
        pattern: Option<String>,
    },
    /// Show a model's configuration, parameters, MACs, paper top-1 and pretrained config.
    Info {
        /// timm model name, e.g. `convformer_s18`.
        name: String,
    },
    /// Run a model on a batch stored as tensor `input` (f32 [B,C,H,W]) in a safetensors file and
    /// write tensor `logits` (f32 [B,num_classes]).
    Run {
        #[command(flatten)]
        source: ModelSource,
        /// safetensors file holding `input`.
        #[arg(long)]
        input: PathBuf,
        /// safetensors file to write `logits` to.
        #[arg(long)]
        output: PathBuf,
    },
    /// Classify images with timm's eval preprocessing and print the top classes.
    Classify {
        #[command(flatten)]
        source: ModelSource,
        /// Image files (JPEG or PNG).
        #[arg(long, num_args = 1.., required = true)]
        image: Vec<PathBuf>,
        /// How many classes to print per image.
        #[arg(long, default_value_t = 5)]
        top: usize,
    },
    /// Benchmark zoo models with random weights: params, GMACs, paper top-1, batch-1 latency and
    /// throughput at a larger batch.
    Bench(BenchArgs),
}

/// Where the model comes from: a hub-style directory, or a zoo name plus a weights file.
#[derive(Args)]
struct ModelSource {
    /// Directory with config.json and model.safetensors (as the hub serves `timm/<name>`).
    #[arg(long, conflicts_with_all = ["model", "weights", "hub"])]
    model_dir: Option<PathBuf>,
    /// Hub model id (`timm/caformer_s18.sail_in1k[@revision]`) already in the local Hugging Face
    /// cache ($HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub); nothing is downloaded.
    #[arg(long, conflicts_with_all = ["model", "weights"])]
    hub: Option<String>,
    /// Zoo model name (with --weights).
    #[arg(long, requires = "weights")]
    model: Option<String>,
    /// safetensors checkpoint in timm's layout (with --model).
    #[arg(long, requires = "model")]
    weights: Option<PathBuf>,
}

impl ModelSource {
    fn load(&self, device: &Device) -> Result<LoadedModel> {
        if let Some(repo) = &self.hub {
            return Ok(load_from_hub_cache(repo, device)?);
        }
        Ok(match (&self.model_dir, &self.model, &self.weights) {
            (Some(dir), _, _) => load_model_dir(dir, device)?,
            (None, Some(name), Some(weights)) => load_weights(name, weights, device)?,
            _ => bail!("give --model-dir DIR, --hub ORG/NAME or --model NAME --weights FILE"),
        })
    }
}

#[derive(Args)]
struct BenchArgs {
    /// Models to benchmark (glob or substring); default: one small model per family.
    #[arg(long)]
    models: Option<String>,
    /// Batch size for the throughput measurement.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Input height and width.
    #[arg(long, default_value_t = 224)]
    image_size: usize,
    /// Timed runs per measurement (after one warm-up run); the median is reported.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Print JSON (one object per model) instead of a table.
    #[arg(long)]
    json: bool,
}

const DEFAULT_BENCH: [&str; 16] = [
    "poolformer_s12",
    "poolformerv2_s12",
    "identityformer_s12",
    "randformer_s12",
    "convformer_s18",
    "caformer_s18",
    "mambaout_femto",
    "mixer_s16_224",
    "resmlp_12_224",
    "gmlp_ti16_224",
    "gfnet_ti",
    "msmlp_tiny",
    "mambaformer_s18",
    "mambamixer_ti",
    "raftmlp_s",
    "affnet_et",
];

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let device = Device::Cpu;
    match cli.command {
        Command::List { pattern } => list(pattern.as_deref().unwrap_or("")),
        Command::Info { name } => info(&name),
        Command::Run {
            source,
            input,
            output,
        } => run_batch(&source.load(&device)?, &input, &output, &device),
        Command::Classify { source, image, top } => {
            classify(&source.load(&device)?, &image, top, &device)
        }
        Command::Bench(args) => bench(&args, &device),
    }
}

fn list(pattern: &str) -> Result<()> {
    let models = list_models(pattern);
    if models.is_empty() {
        bail!("no model matches '{pattern}'; run `tokenmix list` to see all");
    }
    println!(
        "{:<20} {:<15} {:>9} {:>7} {:>7}",
        "model", "family", "params(M)", "GMACs", "top-1"
    );
    for m in models {
        println!(
            "{:<20} {:<15} {:>9.1} {:>7.2} {:>7}",
            m.name,
            m.family,
            m.params() as f64 / 1e6,
            m.macs() as f64 / 1e9,
            top1_text(m.top1)
        );
    }
    Ok(())
}

/// The paper's top-1 as `83.6`, or `-` where the paper gives none for ImageNet-1k training.
fn top1_text(top1: Option<f64>) -> String {
    top1.map_or_else(|| "-".to_string(), |t| format!("{t:.1}"))
}

fn info(name: &str) -> Result<()> {
    let m = model_entry(name)?;
    let cfg = m.config();
    println!("model:          {}", m.name);
    println!("family:         {}", m.family);
    println!(
        "parameters:     {} ({:.2} M)",
        m.params(),
        m.params() as f64 / 1e6
    );
    println!("GMACs @ 224:    {:.3}", m.macs() as f64 / 1e9);
    let top1 = m.top1.map_or_else(
        || "not reported for ImageNet-1k training".to_string(),
        |t| format!("{t:.1}%"),
    );
    println!("paper top-1:    {top1}");
    println!("tensors:        {}", expected_tensors(&cfg)?.len());
    println!("hub id:         timm/{}", m.name);
    println!(
        "pretrained_cfg: {}",
        serde_json::to_string(&m.pretrained_cfg())?
    );
    println!("config:         {}", serde_json::to_string_pretty(&cfg)?);
    Ok(())
}

fn run_batch(model: &LoadedModel, input: &Path, output: &Path, device: &Device) -> Result<()> {
    let tensors = candle_core::safetensors::load(input, device)
        .with_context(|| format!("{}: cannot read safetensors", input.display()))?;
    let Some(x) = tensors.get("input") else {
        bail!("{}: no tensor named 'input'", input.display());
    };
    if !matches!(
        x.dtype(),
        DType::F32 | DType::F16 | DType::BF16 | DType::F64
    ) {
        bail!(
            "{}: 'input' has dtype {:?}, expected f32",
            input.display(),
            x.dtype()
        );
    }
    let logits = model.forward(&x.to_dtype(DType::F32)?)?;
    candle_core::safetensors::save(&[("logits", logits)].into_iter().collect(), output)
        .with_context(|| format!("{}: cannot write", output.display()))?;
    Ok(())
}

fn classify(model: &LoadedModel, images: &[PathBuf], top: usize, device: &Device) -> Result<()> {
    for path in images {
        let x = load_image(path, &model.pretrained_cfg, device)?.unsqueeze(0)?;
        let logits = model.forward(&x)?;
        let probs: Vec<f32> = candle_nn::ops::softmax_last_dim(&logits)?
            .squeeze(0)?
            .to_vec1()?;
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        println!("{}:", path.display());
        for &i in order.iter().take(top) {
            let label = model.class_name(i).unwrap_or_else(|| format!("class {i}"));
            println!("  {:>6.2}%  {label} ({i})", 100.0 * probs[i]);
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct BenchResult {
    name: String,
    family: String,
    params: u64,
    gmacs: f64,
    top1: Option<f64>,
    image_size: usize,
    batch: usize,
    latency_ms: f64,
    images_per_s: f64,
    threads: usize,
    peak_rss_mb: Option<f64>,
}

fn median_time(iters: usize, mut f: impl FnMut() -> Result<Tensor>) -> Result<Duration> {
    f()?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// Peak resident memory of this process so far, from /proc (Linux only).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn bench(args: &BenchArgs, device: &Device) -> Result<()> {
    let entries = match &args.models {
        Some(p) => list_models(p),
        None => DEFAULT_BENCH
            .iter()
            .map(|n| model_entry(n))
            .collect::<Result<_, _>>()?,
    };
    if entries.is_empty() {
        bail!(
            "no model matches '{}'",
            args.models.as_deref().unwrap_or("")
        );
    }
    if args.batch == 0 || args.image_size < 32 {
        bail!("--batch must be positive and --image-size at least 32");
    }
    let threads = candle_core::utils::get_num_threads();
    let bar = ProgressBar::new(entries.len() as u64 * 2);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let s = args.image_size;
    let mut results = Vec::new();
    for m in entries {
        let mut cfg = m.config();
        cfg.set_image_size(s, s);
        let model = random_model(&cfg, device)?;
        bar.set_message(format!("{} batch 1", m.name));
        let x1 = Tensor::randn(0f32, 1.0, (1, 3, s, s), device)?;
        let t1 = median_time(args.iters, || Ok(model.forward(&x1)?))?;
        bar.inc(1);
        bar.set_message(format!("{} batch {}", m.name, args.batch));
        let xb = Tensor::randn(0f32, 1.0, (args.batch, 3, s, s), device)?;
        let tb = median_time(args.iters.div_ceil(2), || Ok(model.forward(&xb)?))?;
        bar.inc(1);
        results.push(BenchResult {
            name: m.name.to_string(),
            family: m.family.to_string(),
            params: m.params(),
            gmacs: cfg.macs(s, s) as f64 / 1e9,
            top1: m.top1,
            image_size: s,
            batch: args.batch,
            latency_ms: t1.as_secs_f64() * 1e3,
            images_per_s: args.batch as f64 / tb.as_secs_f64(),
            threads,
            peak_rss_mb: peak_rss_mb(),
        });
    }
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    println!("{threads} threads, {s}x{s} input, random weights");
    println!(
        "{:<20} {:>9} {:>7} {:>6} {:>12} {:>12}",
        "model",
        "params(M)",
        "GMACs",
        "top-1",
        "b1 ms",
        format!("b{} img/s", args.batch)
    );
    for r in &results {
        println!(
            "{:<20} {:>9.1} {:>7.2} {:>6} {:>12.1} {:>12.1}",
            r.name,
            r.params as f64 / 1e6,
            r.gmacs,
            top1_text(r.top1),
            r.latency_ms,
            r.images_per_s
        );
    }
    Ok(())
}
