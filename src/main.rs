//! The `tokenmix` command line: list and inspect the zoo, run and classify with timm
//! checkpoints, train and fine-tune on image folders, and benchmark the token mixers on this
//! machine.

mod plot;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokenmix::models::checkpoint::{expected_tensors, random_model};
use tokenmix::models::preprocess::load_image;
use tokenmix::models::{list_models, load_model_dir, load_weights, model_entry, LoadedModel};
use tokenmix::train::{self, data::ImageFolder, ModelSpec, Trainer};

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
    /// Train a zoo model (from scratch, from a checkpoint, or resuming a run) on an image-folder
    /// dataset `DATA/{train,val}/<class>/*.png|jpg`.
    Train(Box<TrainArgs>),
}

/// Where the model comes from: a hub-style directory, or a zoo name plus a weights file.
#[derive(Args)]
struct ModelSource {
    /// Directory with config.json and model.safetensors (as the hub serves `timm/<name>`).
    #[arg(long, conflicts_with_all = ["model", "weights", "hub"])]
    model_dir: Option<PathBuf>,
    /// Hub model id (`timm/caformer_s18.sail_in1k[@revision]`), read from the local Hugging Face
    /// cache ($HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub) and downloaded into it
    /// when missing (not with HF_HUB_OFFLINE=1, nor in builds without the `hub` feature).
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
            return load_hub(repo, device);
        }
        Ok(match (&self.model_dir, &self.model, &self.weights) {
            (Some(dir), _, _) => load_model_dir(dir, device)?,
            (None, Some(name), Some(weights)) => load_weights(name, weights, device)?,
            _ => bail!("give --model-dir DIR, --hub ORG/NAME or --model NAME --weights FILE"),
        })
    }
}

/// Loads hub model `repo`, downloading it when the `hub` feature is on.
fn load_hub(repo: &str, device: &Device) -> Result<LoadedModel> {
    Ok(tokenmix::models::load_model_dir(
        &hub_snapshot(repo)?,
        device,
    )?)
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
    /// Also draw paper top-1 against measured images/s and against GMACs, one labelled point
    /// per model, families coloured (.svg or .png).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// `cpu`, or `cuda` for the first GPU (builds with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// The device named on the command line.
fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).context(
            "cannot use the CUDA GPU (is this a --features cuda build on a machine with one?)",
        ),
        other => bail!("unknown device '{other}': use cpu or cuda"),
    }
}

#[derive(Args)]
struct TrainArgs {
    /// Dataset root with `train/<class>/` and (optionally) `val/<class>/` image folders.
    data: PathBuf,
    /// Zoo architecture to train from scratch, e.g. `convformer_s18`.
    #[arg(long, conflicts_with_all = ["init_from", "resume"])]
    model: Option<String>,
    /// timm-style architecture overrides as JSON, e.g. '{"depths":[1,1,2,1],"dims":[16,32,64,128]}'
    /// (with `--model`: a fine-tuned checkpoint keeps the architecture it was saved with).
    #[arg(long, conflicts_with_all = ["resume", "init_from", "init_from_hub"])]
    model_args: Option<String>,
    /// Fine-tune from a hub-style directory (config.json + model.safetensors; timm's or one this
    /// command wrote): every tensor is loaded but a classifier whose class count differs.
    #[arg(long, conflicts_with = "resume")]
    init_from: Option<PathBuf>,
    /// Fine-tune from a hub model id (downloaded or read from the Hugging Face cache).
    #[arg(long, conflicts_with_all = ["init_from", "resume", "model"])]
    init_from_hub: Option<String>,
    /// Resume the run checkpointed in this directory.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Where checkpoints go: the latest epoch in OUT, the best validation top-1 in OUT/best.
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
    /// Input height and width (default: the architecture's).
    #[arg(long, conflicts_with = "resume")]
    img_size: Option<usize>,
    /// Epochs (on --resume: the new total).
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per step.
    #[arg(long, default_value_t = 64, conflicts_with = "resume")]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3, conflicts_with = "resume")]
    lr: f64,
    /// Final learning rate of the cosine decay.
    #[arg(long, default_value_t = 1e-5, conflicts_with = "resume")]
    min_lr: f64,
    /// Epochs of linear warmup.
    #[arg(long, default_value_t = 2, conflicts_with = "resume")]
    warmup_epochs: usize,
    /// AdamW weight decay (not applied to norms, biases, scales).
    #[arg(long, default_value_t = 0.05, conflicts_with = "resume")]
    weight_decay: f64,
    /// Stochastic depth of the last block (default: the architecture's, 0 for most).
    #[arg(long, conflicts_with = "resume")]
    drop_path: Option<f64>,
    /// Label smoothing.
    #[arg(long, default_value_t = 0.1, conflicts_with = "resume")]
    smoothing: f64,
    /// Mixup alpha (0: off; timm's recipes use 0.8).
    #[arg(long, default_value_t = 0.0, conflicts_with = "resume")]
    mixup: f64,
    /// CutMix alpha (0: off; timm's recipes use 1.0).
    #[arg(long, default_value_t = 0.0, conflicts_with = "resume")]
    cutmix: f64,
    /// Smallest random-resized-crop area fraction.
    #[arg(long, default_value_t = 0.08, conflicts_with = "resume")]
    crop_scale: f64,
    /// Horizontal flip probability (0 for data such as digits).
    #[arg(long, default_value_t = 0.5, conflicts_with = "resume")]
    hflip: f64,
    /// Seed of initialization, shuffling and augmentation.
    #[arg(long, default_value_t = 0, conflicts_with = "resume")]
    seed: u64,
    /// Draw loss and accuracy curves to this file (.svg or .png) after every epoch.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// `cpu`, or `cuda` for the first GPU (builds with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
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
    tokenmix::configure_cpu();
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
        Command::Bench(args) => bench(&args, &parse_device(&args.device)?),
        Command::Train(args) => train(&args, &parse_device(&args.device)?),
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
    let features = cfg.feature_info();
    println!(
        "features:       {} maps (forward_intermediates)",
        features.len()
    );
    for f in &features {
        println!(
            "  {}: {} channels, stride {}",
            f.module, f.num_chs, f.reduction
        );
    }
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

/// Median wall time of `f` over `iters` runs after one warm-up, waiting for the device to
/// finish each run.
fn median_time(
    iters: usize,
    device: &Device,
    mut f: impl FnMut() -> Result<Tensor>,
) -> Result<Duration> {
    f()?;
    device.synchronize()?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        f()?;
        device.synchronize()?;
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
    let threads = match device {
        Device::Cpu => candle_core::utils::get_num_threads(),
        _ => 0,
    };
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
        let t1 = median_time(args.iters, device, || Ok(model.forward(&x1)?))?;
        bar.inc(1);
        bar.set_message(format!("{} batch {}", m.name, args.batch));
        let xb = Tensor::randn(0f32, 1.0, (args.batch, 3, s, s), device)?;
        let tb = median_time(args.iters.div_ceil(2), device, || Ok(model.forward(&xb)?))?;
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
    if let Some(path) = &args.plot {
        bench_figure(&results, threads).save(path)?;
        eprintln!("plot written to {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    println!("{}, {s}x{s} input, random weights", machine_text(threads));
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

/// `2 threads` on the CPU, `CUDA GPU` (recorded as 0 threads) on a GPU.
fn machine_text(threads: usize) -> String {
    match threads {
        0 => "CUDA GPU".to_string(),
        n => format!("{n} threads"),
    }
}

/// Paper top-1 against measured throughput and against GMACs, one point per model.
fn bench_figure(results: &[BenchResult], threads: usize) -> plot::Figure {
    let points = |x: fn(&BenchResult) -> f64| -> Vec<plot::Point> {
        results
            .iter()
            .filter_map(|r| {
                r.top1.map(|top1| plot::Point {
                    label: r.name.clone(),
                    group: r.family.clone(),
                    x: x(r),
                    y: top1,
                })
            })
            .collect()
    };
    let (s, b) = results
        .first()
        .map_or((224, 1), |r| (r.image_size, r.batch));
    plot::Figure {
        title: format!(
            "ImageNet-1k top-1 (paper) vs speed measured with random weights: {}, {s}x{s}",
            machine_text(threads)
        ),
        panels: vec![
            plot::Panel {
                title: format!("throughput at batch {b}"),
                x_label: "images/s (measured, log scale)".into(),
                y_label: "top-1 % (paper)".into(),
                log_x: true,
                kind: plot::PanelKind::Scatter(points(|r| r.images_per_s)),
            },
            plot::Panel {
                title: "compute".into(),
                x_label: "GMACs per image (log scale)".into(),
                y_label: "top-1 % (paper)".into(),
                log_x: true,
                kind: plot::PanelKind::Scatter(points(|r| r.gmacs)),
            },
        ],
    }
}

fn parse_model_args(text: Option<&str>) -> Result<serde_json::Map<String, serde_json::Value>> {
    let Some(text) = text else {
        return Ok(Default::default());
    };
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => bail!("--model-args must be a JSON object such as '{{\"depths\":[1,1,2,1]}}'"),
        Err(e) => bail!("--model-args is not valid JSON: {e}"),
    }
}

fn train_config(args: &TrainArgs) -> train::TrainConfig {
    let defaults = train::TrainConfig::default();
    train::TrainConfig {
        epochs: args.epochs.unwrap_or(defaults.epochs),
        batch_size: args.batch_size,
        lr: args.lr,
        min_lr: args.min_lr,
        warmup_epochs: args.warmup_epochs,
        weight_decay: args.weight_decay,
        drop_path: args.drop_path,
        mix: train::mixup::MixConfig {
            mixup_alpha: args.mixup,
            cutmix_alpha: args.cutmix,
            label_smoothing: args.smoothing,
            ..defaults.mix
        },
        augment: train::data::Augment {
            scale: (args.crop_scale, 1.0),
            hflip: args.hflip,
            ..defaults.augment
        },
        seed: args.seed,
        ..defaults
    }
}

/// The trainer the arguments ask for: resumed, fine-tuned or fresh.
fn make_trainer(args: &TrainArgs, train_set: &ImageFolder, device: &Device) -> Result<Trainer> {
    if let Some(dir) = &args.resume {
        let mut trainer = Trainer::resume(dir, device)?;
        if trainer.spec().label_names != train_set.classes {
            bail!(
                "the classes of {} differ from those of the run in {}",
                args.data.display(),
                dir.display()
            );
        }
        if let Some(e) = args.epochs {
            trainer.set_epochs(e);
        }
        eprintln!(
            "resuming {} after epoch {}",
            dir.display(),
            trainer.epochs_done()
        );
        return Ok(trainer);
    }
    let cfg = train_config(args);
    let classes = train_set.classes.clone();
    let size = args.img_size.map(|s| (s, s));
    let init_dir = match (&args.init_from, &args.init_from_hub) {
        (Some(dir), _) => Some(dir.clone()),
        (None, Some(repo)) => Some(hub_snapshot(repo)?),
        _ => None,
    };
    if let Some(dir) = init_dir {
        let mut spec = ModelSpec::read(&dir)?;
        spec.label_names = classes;
        spec.pretrained_cfg.num_classes = spec.label_names.len();
        if let Some(size) = size {
            spec.pretrained_cfg.set_image_size(size);
            spec.fit_fixed_size()?;
        }
        let (trainer, fresh) = Trainer::fine_tune(&dir, spec, cfg, train_set.len(), device)?;
        if !fresh.is_empty() {
            eprintln!(
                "re-initialised for {} classes: {}",
                train_set.classes.len(),
                fresh.join(", ")
            );
        }
        return Ok(trainer);
    }
    let Some(name) = &args.model else {
        bail!("give --model NAME, --init-from DIR, --init-from-hub ORG/NAME or --resume DIR");
    };
    let spec = ModelSpec::new(
        name,
        parse_model_args(args.model_args.as_deref())?,
        classes,
        size,
    )?;
    Ok(Trainer::from_scratch(spec, cfg, train_set.len(), device)?)
}

/// The snapshot directory of hub model `repo`, downloaded when needed.
fn hub_snapshot(repo: &str) -> Result<PathBuf> {
    #[cfg(feature = "hub")]
    return Ok(tokenmix::models::HubSource::from_env()?.snapshot(repo)?);
    #[cfg(not(feature = "hub"))]
    return Ok(tokenmix::models::hub::snapshot_in_hub_cache(repo)?);
}

fn train(args: &TrainArgs, device: &Device) -> Result<()> {
    let train_set = ImageFolder::open(&args.data.join("train"))?;
    let val_dir = args.data.join("val");
    let val_set = if val_dir.is_dir() {
        Some(ImageFolder::open_with_classes(
            &val_dir,
            &train_set.classes,
        )?)
    } else {
        None
    };
    let mut trainer = make_trainer(args, &train_set, device)?;
    let spec = trainer.spec();
    eprintln!(
        "{}: {} classes, {} training / {} validation images at {:?}, {} epochs",
        spec.architecture,
        spec.label_names.len(),
        train_set.len(),
        val_set.as_ref().map_or(0, |v| v.len()),
        spec.pretrained_cfg.image_size(),
        trainer.config().epochs
    );
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let epochs = trainer.config().epochs;
    let mut epoch = trainer.epochs_done();
    let plot_path = args.plot.clone();
    let mut history: Vec<train::EpochStats> = trainer.history().to_vec();
    let mut on_step = |s: train::StepStats| {
        if s.step == 1 {
            epoch += 1;
            bar.set_length(s.steps as u64);
            bar.set_position(0);
            bar.set_prefix(format!("epoch {epoch}/{epochs}"));
        }
        bar.set_position(s.step as u64);
        bar.set_message(format!(
            "loss {:.4}  lr {:.2e}  {:.0} img/s",
            s.loss, s.lr, s.images_per_sec
        ));
    };
    let mut on_epoch = |e: &train::EpochStats| {
        let val = e.val.map_or_else(String::new, |v| {
            format!(
                "  val loss {:.4}  top-1 {:.2}%  top-5 {:.2}%",
                v.loss, v.top1, v.top5
            )
        });
        let line = format!(
            "epoch {:>3}  train loss {:.4}{val}  {:.0} img/s",
            e.epoch, e.train_loss, e.images_per_sec
        );
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
        history.push(*e);
        if let Some(path) = &plot_path {
            if let Err(err) = train_figure(&history).save(path) {
                bar.println(format!("warning: cannot draw {}: {err:#}", path.display()));
            }
        }
    };
    trainer.fit(
        &train_set,
        val_set.as_ref(),
        Some(&args.out),
        &mut on_step,
        &mut on_epoch,
    )?;
    bar.finish_and_clear();
    if let Some(last) = trainer.history().last() {
        let best = trainer
            .history()
            .iter()
            .filter_map(|e| e.val.map(|v| v.top1))
            .fold(f64::NAN, f64::max);
        let best_dir = args.out.join("best");
        let best_text = if best_dir.join("model.safetensors").is_file() {
            format!(", best in {}", best_dir.display())
        } else {
            String::new()
        };
        match last.val {
            Some(v) => println!(
                "done: validation top-1 {:.2}% (best {:.2}%), top-5 {:.2}%; model in {}{best_text}",
                v.top1,
                best,
                v.top5,
                args.out.display(),
            ),
            None => println!("done: model in {}", args.out.display()),
        }
    }
    Ok(())
}

/// Training loss and validation loss against epoch, and validation accuracy against epoch.
fn train_figure(history: &[train::EpochStats]) -> plot::Figure {
    let series = |name: &str, f: &dyn Fn(&train::EpochStats) -> Option<f64>| plot::Series {
        name: name.to_string(),
        points: history
            .iter()
            .filter_map(|e| f(e).map(|y| (e.epoch as f64, y)))
            .collect(),
    };
    plot::Figure {
        title: "training".into(),
        panels: vec![
            plot::Panel {
                title: "loss".into(),
                x_label: "epoch".into(),
                y_label: "cross-entropy".into(),
                log_x: false,
                kind: plot::PanelKind::Lines(vec![
                    series("train (mixed, smoothed targets)", &|e| Some(e.train_loss)),
                    series("validation", &|e| e.val.map(|v| v.loss)),
                ]),
            },
            plot::Panel {
                title: "validation accuracy".into(),
                x_label: "epoch".into(),
                y_label: "accuracy %".into(),
                log_x: false,
                kind: plot::PanelKind::Lines(vec![
                    series("top-1", &|e| e.val.map(|v| v.top1)),
                    series("top-5", &|e| e.val.map(|v| v.top5)),
                ]),
            },
        ],
    }
}
