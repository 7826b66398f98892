//! The `tokenmix` command line: list and inspect the zoo, run and classify with timm
//! checkpoints, train and fine-tune on image folders, and benchmark the token mixers on this
//! machine.

mod forecast_cli;
mod plot;
mod text_cli;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokenmix::infer::{self, ClassMap, Prefetch, Shard};
use tokenmix::models::checkpoint::{expected_tensors, param_count, random_model_as};
use tokenmix::models::sequence::{
    list_sequence_models, sequence_entry, sequence_param_count, SequenceTask,
};
use tokenmix::models::{
    list_models, load_model_dir_as, load_weights_as, model_entry, LoadedModel, PretrainedCfg,
};
use tokenmix::train::{self, data::ImageFolder, ModelSpec, Trainer};

#[derive(Parser)]
#[command(
    name = "tokenmix",
    version,
    about = "A model zoo of vision token mixers on candle"
)]
struct Cli {
    /// Threads for the model and for decoding images (default: $RAYON_NUM_THREADS, else the
    /// physical cores).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Say on stderr what loading did (the checkpoint's stored dtypes, conversions).
    #[arg(long, short, global = true)]
    verbose: bool,
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
    /// Classify images with timm's eval preprocessing and print the top classes: files,
    /// directories and globs, decoded in parallel and run in batches; unreadable files are
    /// reported and skipped (the exit status is then 1).
    Classify(ClassifyArgs),
    /// Evaluate a model on an image-folder dataset (`DATA/<class>/*` or `DATA/val/<class>/*`)
    /// as timm's validate.py does: top-1, top-5, loss and images/s.
    Validate(ValidateArgs),
    /// Benchmark zoo models with random weights: params, GMACs, paper top-1, batch-1 latency and
    /// throughput at a larger batch.
    Bench(BenchArgs),
    /// Train a zoo model (from scratch, from a checkpoint, or resuming a run) on an image-folder
    /// dataset `DATA/{train,val}/<class>/*.png|jpg`.
    Train(Box<TrainArgs>),
    /// Convert a PyTorch checkpoint (torch.save's format: the .pth files reference repositories
    /// publish) into a model directory (config.json + model.safetensors) that --model-dir
    /// loads. The checkpoint is checked as loading checks it; nothing in it is executed.
    Convert(ConvertArgs),
    /// Forecast multivariate series from CSV files: train a sequence model (Tiny Time Mixers,
    /// PatchTSMixer, ...) against the naive baselines, or predict the steps after a series.
    Forecast(forecast_cli::ForecastArgs),
    /// Classify texts with PoNet: train a classifier from scratch on labelled TSV files
    /// against the majority class, or classify the lines of a file.
    Text(text_cli::TextArgs),
}

#[derive(Args)]
struct ConvertArgs {
    /// The PyTorch checkpoint.
    checkpoint: PathBuf,
    /// Zoo model the checkpoint holds (its default configuration).
    #[arg(long, required_unless_present = "config", conflicts_with = "config")]
    model: Option<String>,
    /// `model_args` for --model, as JSON with the reference's keyword names (e.g.
    /// '{"distillation": true}' for a distilled checkpoint).
    #[arg(long, requires = "model")]
    model_args: Option<String>,
    /// A config.json (architecture, model_args, ...) describing the model instead.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Key of the state dict in the checkpoint (default: the checkpoint itself when it is a
    /// dict of tensors, else the first of state_dict, model, module, net).
    #[arg(long)]
    key: Option<String>,
    /// Directory to write config.json and model.safetensors to (created if missing).
    #[arg(long)]
    out: PathBuf,
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
    /// Checkpoint in timm's layout (with --model): safetensors, or a PyTorch torch.save file.
    #[arg(long, requires = "model")]
    weights: Option<PathBuf>,
    /// The dtype the model computes in: f32, bf16 or f16 (weights stored otherwise are
    /// converted once at load; norms, softmaxes and reductions accumulate in f32).
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    dtype: DType,
}

impl ModelSource {
    fn load(&self, device: &Device) -> Result<LoadedModel> {
        let dtype = self.dtype;
        let model = if let Some(repo) = &self.hub {
            load_model_dir_as(&hub_snapshot(repo)?, device, dtype)?
        } else {
            match (&self.model_dir, &self.model, &self.weights) {
                (Some(dir), _, _) => load_model_dir_as(dir, device, dtype)?,
                (None, Some(name), Some(weights)) => load_weights_as(name, weights, device, dtype)?,
                _ => bail!("give --model-dir DIR, --hub ORG/NAME or --model NAME --weights FILE"),
            }
        };
        if verbose() {
            eprintln!("{}", load_report(&model));
        }
        Ok(model)
    }
}

/// What loading `model` did with its checkpoint's dtypes, for `--verbose`.
fn load_report(model: &LoadedModel) -> String {
    let computes = model.dtype.as_str();
    let stored: Vec<String> = model
        .stored_dtypes
        .iter()
        .map(|(d, n)| format!("{n} tensors stored in {}", d.as_str()))
        .collect();
    let converted: usize = model
        .stored_dtypes
        .iter()
        .filter(|(d, _)| *d != model.dtype)
        .map(|(_, n)| n)
        .sum();
    let conversion = if converted == 0 {
        "none converted".to_string()
    } else {
        format!("{converted} converted once to {computes} at load")
    };
    format!(
        "loaded {} computing in {computes}: {}; {conversion}",
        model.name,
        stored.join(", ")
    )
}

/// Whether `--verbose` was given.
fn verbose() -> bool {
    VERBOSE.load(std::sync::atomic::Ordering::Relaxed)
}

static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A `--dtype` value: f32, bf16 or f16.
fn parse_dtype(text: &str) -> std::result::Result<DType, String> {
    match text {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => Err(format!("models run in f32, bf16 or f16, not '{other}'")),
    }
}

/// timm's eval preprocessing, by default as the model's pretrained_cfg says.
#[derive(Args)]
struct PreprocessArgs {
    /// Input height and width (default: the pretrained_cfg's input_size).
    #[arg(long)]
    img_size: Option<usize>,
    /// Fraction of the resized image kept by the center crop, in (0, 1] (default: the
    /// pretrained_cfg's crop_pct).
    #[arg(long)]
    crop_pct: Option<f64>,
    /// Resize filter: bicubic, bilinear, nearest or lanczos (default: the pretrained_cfg's).
    #[arg(long)]
    interpolation: Option<String>,
}

impl PreprocessArgs {
    /// The model's preprocessing with the overrides applied.
    fn apply(&self, model: &LoadedModel) -> Result<PretrainedCfg> {
        let mut cfg = model.pretrained_cfg.clone();
        if let Some(s) = self.img_size {
            if let Some((h, w)) = model.config.fixed_image_size().filter(|&f| f != (s, s)) {
                bail!(
                    "{} takes {h}x{w} images only, not --img-size {s}",
                    model.name
                );
            }
            if s < 4 {
                bail!("--img-size must be at least 4");
            }
            cfg.set_image_size((s, s));
        }
        if let Some(c) = self.crop_pct {
            if !(c > 0.0 && c <= 1.0) {
                bail!("--crop-pct must be in (0, 1], got {c}");
            }
            cfg.crop_pct = c;
        }
        if let Some(i) = &self.interpolation {
            if !["bicubic", "bilinear", "nearest", "lanczos"].contains(&i.as_str()) {
                bail!("--interpolation must be bicubic, bilinear, nearest or lanczos, not '{i}'");
            }
            cfg.interpolation = i.clone();
        }
        Ok(cfg)
    }
}

#[derive(Args)]
struct ClassifyArgs {
    #[command(flatten)]
    source: ModelSource,
    /// Image files, directories (every .jpg, .jpeg and .png below them) and quoted globs
    /// ('scans/**/*.png'); processed in sorted path order, each once.
    inputs: Vec<String>,
    /// More inputs, as the positional ones.
    #[arg(long, num_args = 1..)]
    image: Vec<String>,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Print one JSON object per image and line: path, indices, labels, probabilities.
    #[arg(long)]
    json: bool,
    /// Classify only part I of N of the sorted file list (0-based: 0/4 .. 3/4), so that N
    /// processes cover the inputs exactly once.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    #[command(flatten)]
    preprocess: PreprocessArgs,
    /// `cpu`, or `cuda` for the first GPU (builds with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct ValidateArgs {
    /// Dataset root: `DATA/val/<class>/*` if DATA has a `val` directory, else `DATA/<class>/*`.
    data: PathBuf,
    #[command(flatten)]
    source: ModelSource,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Which model class each folder holds: a text file with one folder name per line in the
    /// model's class order (timm's format), or JSON {"folder": index}. Default: the model's
    /// label_names, else the folders in sorted order.
    #[arg(long)]
    class_map: Option<PathBuf>,
    /// Also write the results here, with timm's column names (CSV, or JSON for `.json`).
    #[arg(long)]
    results_file: Option<PathBuf>,
    #[command(flatten)]
    preprocess: PreprocessArgs,
    /// `cpu`, or `cuda` for the first GPU (builds with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct BenchArgs {
    /// Models to benchmark (glob or substring); default: one small model per family.
    #[arg(long)]
    models: Option<String>,
    /// Batch size for the throughput measurement.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Input height and width; a comma-separated list (`224,384,512`) measures every model at
    /// each size, and `--plot` then draws latency and GMACs against the size.
    #[arg(long, value_delimiter = ',', default_value = "224")]
    image_size: Vec<usize>,
    /// Timed runs per measurement (after one warm-up run); the median is reported.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Print JSON (one object per model) instead of a table.
    #[arg(long)]
    json: bool,
    /// Also draw paper top-1 against measured images/s and against GMACs, one labelled point
    /// per model, families coloured (with several sizes: batch-1 latency and GMACs against the
    /// input size, one line per model) (.svg or .png).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// `cpu`, or `cuda` for the first GPU (builds with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The dtype the models compute in: f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    dtype: DType,
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

const DEFAULT_BENCH: [&str; 28] = [
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
    "rcvit_xs",
    "EfficientViM_M1",
    "wavemix_lite",
    "iformer_small",
    "ffnet_1",
    "ninformer_s16_224",
    "linattnformer_s18",
    "transnext_micro",
    "hydraformer_s18",
    "hydra_vit_s16_224",
    "tokenmix_dsm_s18",
    "tokenmix_s2a_s",
];

fn main() {
    // Die quietly on a closed pipe (`tokenmix list | head`), as other command-line tools do,
    // instead of panicking in `println!`.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    VERBOSE.store(cli.verbose, std::sync::atomic::Ordering::Relaxed);
    if let Some(n) = cli.threads {
        // Still single-threaded: nothing has read the environment or started a thread yet.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    tokenmix::configure_cpu();
    if let Err(e) = run(cli) {
        eprintln!("error: {}", error_text(&e));
        std::process::exit(1);
    }
}

/// The error and its causes joined by ": ", each cause once: a cause whose text is already
/// part of the message is left out (the library errors print their source, as in
/// `x.json: No such file or directory (os error 2)`, and also return it as `source()`).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if text.contains(&s) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&s);
    }
    text
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
        Command::Classify(args) => classify(&args, &parse_device(&args.device)?),
        Command::Validate(args) => validate(&args, &parse_device(&args.device)?),
        Command::Bench(args) => bench(&args, &parse_device(&args.device)?),
        Command::Train(args) => train(&args, &parse_device(&args.device)?),
        Command::Convert(args) => convert(&args),
        Command::Forecast(args) => forecast_cli::run(&args, &Device::Cpu),
        Command::Text(args) => text_cli::run(&args, &Device::Cpu),
    }
}

fn convert(args: &ConvertArgs) -> Result<()> {
    let config = match (&args.config, &args.model) {
        (Some(path), _) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        (None, Some(name)) => {
            let args: serde_json::Value = match &args.model_args {
                Some(text) => serde_json::from_str(text)
                    .with_context(|| format!("--model-args is not JSON: {text}"))?,
                None => serde_json::json!({}),
            };
            serde_json::json!({ "architecture": name, "model_args": args }).to_string()
        }
        (None, None) => bail!("give --model NAME or --config FILE"),
    };
    let done = tokenmix::models::convert_to_dir(
        &config,
        &args.checkpoint,
        args.key.as_deref(),
        &args.out,
    )?;
    println!(
        "{}: {} tensors ({} left out: batch-norm step counters) -> {} ({:.1} MiB)",
        done.name,
        done.tensors,
        done.dropped,
        args.out.join("model.safetensors").display(),
        done.bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}

fn list(pattern: &str) -> Result<()> {
    let models = list_models(pattern);
    let sequence = list_sequence_models(pattern);
    if models.is_empty() && sequence.is_empty() {
        bail!("no model matches '{pattern}'; run `tokenmix list` to see all");
    }
    if !models.is_empty() {
        list_image_models(&models);
    }
    if !sequence.is_empty() {
        if !models.is_empty() {
            println!();
        }
        println!(
            "{:<38} {:<28} {:>9}  task",
            "sequence model", "architecture", "params(M)"
        );
        for e in sequence {
            let cfg = (e.config)();
            let params = sequence_param_count(&cfg)?;
            let task = match cfg.task() {
                SequenceTask::Forecast {
                    context_length,
                    prediction_length,
                    ..
                } => format!("forecast {context_length} -> {prediction_length} steps"),
                SequenceTask::Classify { num_labels, .. } => {
                    format!("classify text ({num_labels} labels)")
                }
                SequenceTask::MaskedLm { .. } => "text pre-training (masked LM)".to_string(),
            };
            println!(
                "{:<38} {:<28} {:>9.2}  {task}",
                e.name,
                cfg.architecture(),
                params as f64 / 1e6
            );
        }
    }
    Ok(())
}

fn list_image_models(models: &[&tokenmix::models::ModelEntry]) {
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
}

/// The paper's top-1 as `83.6`, or `-` where the paper gives none for ImageNet-1k training.
fn top1_text(top1: Option<f64>) -> String {
    top1.map_or_else(|| "-".to_string(), |t| format!("{t:.1}"))
}

fn info(name: &str) -> Result<()> {
    if let Ok(e) = sequence_entry(name) {
        let cfg = (e.config)();
        println!("model:          {}", e.name);
        println!("source:         {}", e.source);
        println!("architecture:   {}", cfg.architecture());
        println!("params:         {}", sequence_param_count(&cfg)?);
        println!("MACs:           {} per sample", cfg.macs(0));
        println!(
            "config.json:    {}",
            serde_json::to_string_pretty(&cfg.to_hf_config())?
        );
        return Ok(());
    }
    let m = model_entry(name)?;
    let cfg = m.config();
    println!("model:          {}", m.name);
    println!("family:         {}", m.family);
    println!(
        "parameters:     {} ({:.2} M)",
        m.params(),
        m.params() as f64 / 1e6
    );
    let (h, w) = m.pretrained_cfg().image_size();
    let size = if h == w {
        format!("{h}²")
    } else {
        format!("{h}x{w}")
    };
    println!(
        "{:<16}{:.3}",
        format!("GMACs @ {size}:"),
        m.macs() as f64 / 1e9
    );
    let top1 = m.top1.map_or_else(
        || "not reported for ImageNet-1k training".to_string(),
        |t| format!("{t:.1}%"),
    );
    println!("paper top-1:    {top1}");
    println!("tensors:        {}", expected_tensors(&cfg)?.len());
    let hub_id = m
        .hub_id()
        .unwrap_or_else(|| "none (timm publishes no weights for it)".into());
    println!("hub id:         {hub_id}");
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

/// A progress bar on stderr (hidden when stderr is not a terminal).
fn progress_bar(len: usize, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// One line of `classify --json`.
#[derive(Serialize)]
struct Prediction<'a> {
    path: &'a Path,
    indices: &'a [usize],
    labels: Vec<Option<String>>,
    probabilities: Vec<f32>,
}

fn classify(args: &ClassifyArgs, device: &Device) -> Result<()> {
    let inputs: Vec<&String> = args.inputs.iter().chain(&args.image).collect();
    if inputs.is_empty() {
        bail!("give the images to classify: files, directories or quoted globs");
    }
    let model = args.source.load(device)?;
    let cfg = args.preprocess.apply(&model)?;
    let files = infer::expand_inputs(&inputs)?;
    let files = args.shard.unwrap_or(Shard::ALL).select(files);
    let total = files.len();
    let bar = progress_bar(total, "{bar:30} {pos}/{len} images  {per_sec}  eta {eta}");
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = 0usize;
    for batch in Prefetch::new(files, &cfg, args.batch_size) {
        for (_, e) in &batch.failed {
            bar.suspend(|| eprintln!("warning: skipped {e}"));
        }
        failed += batch.failed.len();
        bar.inc(batch.failed.len() as u64);
        let Some(x) = batch.tensor(device)? else {
            continue;
        };
        let probs = candle_nn::ops::softmax_last_dim(&model.forward(&x)?)?.to_vec2::<f32>()?;
        for (path, p) in batch.items.iter().zip(&probs) {
            let top = infer::top_k(p, args.top);
            if args.json {
                let line = Prediction {
                    path,
                    indices: &top,
                    labels: top.iter().map(|&i| model.class_name(i)).collect(),
                    probabilities: top.iter().map(|&i| p[i]).collect(),
                };
                serde_json::to_writer(&mut out, &line)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{}:", path.display())?;
                for &i in &top {
                    let label = model.class_name(i).unwrap_or_else(|| format!("class {i}"));
                    writeln!(out, "  {:>6.2}%  {label} ({i})", 100.0 * p[i])?;
                }
            }
        }
        bar.suspend(|| out.flush())?;
        bar.inc(batch.items.len() as u64);
    }
    bar.finish_and_clear();
    out.flush()?;
    if failed > 0 {
        bail!("{failed} of {total} images could not be read (each is listed above)");
    }
    Ok(())
}

/// timm's validate.py results: its columns, then loss and throughput.
#[derive(Serialize)]
struct ValidateResults {
    model: String,
    top1: f64,
    top1_err: f64,
    top5: f64,
    top5_err: f64,
    param_count: f64,
    img_size: usize,
    crop_pct: f64,
    interpolation: String,
    loss: f64,
    images_per_sec: f64,
}

/// `x` rounded to `digits` decimals, as Python's `round` gives it for the results file.
fn round_to(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

fn validate(args: &ValidateArgs, device: &Device) -> Result<()> {
    let val = args.data.join("val");
    let root = if val.is_dir() { val } else { args.data.clone() };
    let folder = ImageFolder::open(&root)?;
    let model = args.source.load(device)?;
    let cfg = args.preprocess.apply(&model)?;
    let map = match &args.class_map {
        Some(path) => ClassMap::read(path)?,
        None => ClassMap::for_model(&model, &folder.classes)?,
    };
    let classes = map.indices(&folder.classes, model.model.num_classes())?;
    let samples: Vec<(PathBuf, usize)> = folder
        .samples
        .iter()
        .map(|(p, c)| (p.clone(), classes[*c]))
        .collect();
    let bar = progress_bar(
        samples.len(),
        "{bar:30} {pos}/{len} images  {per_sec}  eta {eta}",
    );
    let stats = infer::validate(&model, samples, &cfg, args.batch_size, device, |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    let (h, w) = cfg.image_size();
    let name = args
        .source
        .hub
        .clone()
        .unwrap_or_else(|| model.name.clone());
    println!("model:       {name}");
    println!(
        "data:        {}: {} images in {} classes",
        root.display(),
        stats.images,
        folder.classes.len()
    );
    println!(
        "preprocess:  {h}x{w}, {}, crop_pct {}",
        cfg.interpolation,
        py_float(cfg.crop_pct)
    );
    println!(
        "top-1:       {:.3}% (error {:.3}%)",
        stats.top1,
        100.0 - stats.top1
    );
    println!(
        "top-5:       {:.3}% (error {:.3}%)",
        stats.top5,
        100.0 - stats.top5
    );
    println!("loss:        {:.4}", stats.loss);
    println!(
        "images/s:    {:.1} ({:.2} s, batch {}, {})",
        stats.images_per_sec,
        stats.seconds,
        args.batch_size,
        machine_text(match device {
            Device::Cpu => candle_core::utils::get_num_threads(),
            _ => 0,
        })
    );
    if let Some(path) = &args.results_file {
        let r = ValidateResults {
            model: name,
            top1: round_to(stats.top1, 4),
            top1_err: round_to(100.0 - stats.top1, 4),
            top5: round_to(stats.top5, 4),
            top5_err: round_to(100.0 - stats.top5, 4),
            param_count: round_to(param_count(&model.config)? as f64 / 1e6, 2),
            img_size: w,
            crop_pct: cfg.crop_pct,
            interpolation: cfg.interpolation.clone(),
            loss: round_to(stats.loss, 4),
            images_per_sec: round_to(stats.images_per_sec, 2),
        };
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let text = if is_json {
            serde_json::to_string_pretty(&r)? + "\n"
        } else {
            results_csv(&r)
        };
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// `x` as Python prints a float (`100.0`, `0.9`).
fn py_float(x: f64) -> String {
    serde_json::to_string(&x).unwrap_or_else(|_| x.to_string())
}

/// A header line of the field names and one row of values, as Python's `csv.DictWriter`
/// writes timm's results (field order as in [`ValidateResults`]).
fn results_csv(r: &ValidateResults) -> String {
    let quote = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let fields = [
        ("model", quote(&r.model)),
        ("top1", py_float(r.top1)),
        ("top1_err", py_float(r.top1_err)),
        ("top5", py_float(r.top5)),
        ("top5_err", py_float(r.top5_err)),
        ("param_count", py_float(r.param_count)),
        ("img_size", r.img_size.to_string()),
        ("crop_pct", py_float(r.crop_pct)),
        ("interpolation", quote(&r.interpolation)),
        ("loss", py_float(r.loss)),
        ("images_per_sec", py_float(r.images_per_sec)),
    ];
    let header: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
    let row: Vec<&str> = fields.iter().map(|(_, v)| v.as_str()).collect();
    format!("{}\n{}\n", header.join(","), row.join(","))
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
    dtype: String,
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
    if args.batch == 0 || args.image_size.is_empty() || args.image_size.iter().any(|&s| s < 32) {
        bail!("--batch must be positive and every --image-size at least 32");
    }
    let threads = match device {
        Device::Cpu => candle_core::utils::get_num_threads(),
        _ => 0,
    };
    let sizes = &args.image_size;
    let bar = ProgressBar::new((entries.len() * sizes.len()) as u64 * 2);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut results = Vec::new();
    for &s in sizes {
        for m in &entries {
            results.push(bench_one(m, s, args, device, threads, &bar)?);
        }
    }
    bar.finish_and_clear();
    if let Some(path) = &args.plot {
        let figure = if sizes.len() > 1 {
            scaling_figure(&results, threads)
        } else {
            bench_figure(&results, threads)
        };
        figure.save(path)?;
        eprintln!("plot written to {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    for &s in sizes {
        println!(
            "{}, {s}x{s} input, random weights, {}",
            machine_text(threads),
            args.dtype.as_str()
        );
        println!(
            "{:<20} {:>9} {:>7} {:>6} {:>12} {:>12}",
            "model",
            "params(M)",
            "GMACs",
            "top-1",
            "b1 ms",
            format!("b{} img/s", args.batch)
        );
        for r in results.iter().filter(|r| r.image_size == s) {
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
    }
    Ok(())
}

/// Measures zoo model `m` with random weights at `s x s`: batch-1 latency and batch throughput.
fn bench_one(
    m: &tokenmix::models::ModelEntry,
    s: usize,
    args: &BenchArgs,
    device: &Device,
    threads: usize,
    bar: &ProgressBar,
) -> Result<BenchResult> {
    let mut cfg = m.config();
    cfg.set_image_size(s, s);
    let model = random_model_as(&cfg, device, args.dtype)?;
    bar.set_message(format!("{} {s}x{s} batch 1", m.name));
    let x1 = Tensor::randn(0f32, 1.0, (1, 3, s, s), device)?.to_dtype(args.dtype)?;
    let t1 = median_time(args.iters, device, || Ok(model.forward(&x1)?))?;
    bar.inc(1);
    bar.set_message(format!("{} {s}x{s} batch {}", m.name, args.batch));
    let xb = Tensor::randn(0f32, 1.0, (args.batch, 3, s, s), device)?.to_dtype(args.dtype)?;
    let tb = median_time(args.iters.div_ceil(2), device, || Ok(model.forward(&xb)?))?;
    bar.inc(1);
    Ok(BenchResult {
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
        dtype: args.dtype.as_str().to_string(),
        peak_rss_mb: peak_rss_mb(),
    })
}

/// `2 threads` (`1 thread`) on the CPU, `CUDA GPU` (recorded as 0 threads) on a GPU.
fn machine_text(threads: usize) -> String {
    match threads {
        0 => "CUDA GPU".to_string(),
        1 => "1 thread".to_string(),
        n => format!("{n} threads"),
    }
}

/// Paper top-1 against measured throughput and against GMACs, one point per model.
/// Batch-1 latency and GMACs against the input side, one line per model.
fn scaling_figure(results: &[BenchResult], threads: usize) -> plot::Figure {
    let mut names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
    names.dedup();
    names.sort_unstable();
    names.dedup();
    let lines = |y: fn(&BenchResult) -> f64| -> Vec<plot::Series> {
        names
            .iter()
            .map(|&name| plot::Series {
                name: name.to_string(),
                points: results
                    .iter()
                    .filter(|r| r.name == name)
                    .map(|r| (r.image_size as f64, y(r)))
                    .collect(),
            })
            .collect()
    };
    let panel = |title: &str, y_label: &str, y: fn(&BenchResult) -> f64| plot::Panel {
        title: title.to_string(),
        x_label: "input side (pixels)".to_string(),
        y_label: y_label.to_string(),
        log_x: false,
        kind: plot::PanelKind::Lines(lines(y)),
    };
    plot::Figure {
        title: format!(
            "cost against resolution ({}, random weights)",
            machine_text(threads)
        ),
        panels: vec![
            panel("batch-1 latency", "ms", |r| r.latency_ms),
            panel("multiply-accumulates", "GMACs", |r| r.gmacs),
        ],
    }
}

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
