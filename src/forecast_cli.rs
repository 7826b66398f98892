//! `tokenmix forecast`: train a forecaster on a CSV series and report it against the naive
//! baselines, or forecast the steps after a series with a trained or hub model.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use tokenmix::models::sequence::{
    load_sequence_dir, save_sequence_dir, sequence_entry, sequence_param_count, SequenceTask,
};
use tokenmix::train::forecast::{
    adapt_config, predict_windows, train_forecaster, ForecastConfig, ForecastData, ForecastReport,
    Metrics, SeriesTable, Standardizer,
};

use crate::plot::{Figure, Panel, PanelKind, Series};

/// Arguments of `tokenmix forecast`.
#[derive(Args)]
pub struct ForecastArgs {
    #[command(subcommand)]
    command: ForecastCommand,
}

#[derive(Subcommand)]
enum ForecastCommand {
    /// Train a forecaster from scratch on a CSV series (time-ordered train / validation / test
    /// parts), then report its test MSE and MAE next to the naive and seasonal-naive forecasts.
    Train(TrainArgs),
    /// Forecast the steps after the end of a CSV series with a model directory (one `train`
    /// wrote, or a hub directory such as granite-timeseries-ttm-r2's); prints CSV.
    Predict(PredictArgs),
}

#[derive(Args)]
struct TrainArgs {
    /// CSV file with a header: a time column first (optional) and numeric columns.
    csv: PathBuf,
    /// Zoo sequence model whose architecture is trained (e.g. granite-timeseries-ttm-r1,
    /// granite-timeseries-patchtsmixer).
    #[arg(long, default_value = "granite-timeseries-ttm-r1")]
    model: String,
    /// Architecture overrides as JSON with the reference config's keys, e.g.
    /// '{"d_model":64,"num_layers":2}'.
    #[arg(long)]
    model_args: Option<String>,
    /// Steps the model reads (default: the model's context_length).
    #[arg(long)]
    context: Option<usize>,
    /// Steps it predicts (default: the model's prediction_length).
    #[arg(long)]
    horizon: Option<usize>,
    /// Columns to model, comma-separated (default: every numeric column).
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
    /// Season of the seasonal-naive baseline in steps (e.g. 24 for hourly data).
    #[arg(long)]
    season: Option<usize>,
    /// Training and validation fractions of the rows (the rest is the test part).
    #[arg(long, value_delimiter = ',', default_value = "0.7,0.1")]
    split: Vec<f64>,
    /// Passes over the training windows.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Windows per step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Peak learning rate (cosine schedule after a short warmup).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Steps between training windows' origins.
    #[arg(long, default_value_t = 1)]
    train_stride: usize,
    /// Seed of the initial weights and window order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Directory for the best model (config.json + model.safetensors, the reference's layout)
    /// and forecast.json (columns, standardisation, report).
    #[arg(long, default_value = "runs/forecast")]
    out: PathBuf,
    /// Draw the first test window's forecast against the truth and the baselines (.svg/.png).
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Args)]
struct PredictArgs {
    /// CSV series whose next steps are forecast (its last context_length rows are read).
    csv: PathBuf,
    /// Model directory: config.json + model.safetensors, and forecast.json when `train` wrote
    /// it (its columns and standardisation are then used).
    #[arg(long)]
    model_dir: PathBuf,
    /// Columns to forecast (default: those forecast.json names, else every numeric column).
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
}

/// Runs `tokenmix forecast`.
pub fn run(args: &ForecastArgs, device: &Device) -> Result<()> {
    match &args.command {
        ForecastCommand::Train(a) => train(a, device),
        ForecastCommand::Predict(a) => predict(a, device),
    }
}

fn parse_model_args(text: Option<&str>) -> Result<Map<String, Value>> {
    match text {
        None => Ok(Map::new()),
        Some(t) => match serde_json::from_str(t).context("--model-args is not valid JSON")? {
            Value::Object(m) => Ok(m),
            other => bail!("--model-args must be a JSON object, got {other}"),
        },
    }
}

fn train(a: &TrainArgs, device: &Device) -> Result<()> {
    let entry = sequence_entry(&a.model)?;
    let base = (entry.config)();
    let SequenceTask::Forecast {
        context_length,
        prediction_length,
        ..
    } = base.task()
    else {
        bail!("{} is not a forecasting model", a.model);
    };
    let context = a.context.unwrap_or(context_length);
    let horizon = a.horizon.unwrap_or(prediction_length);
    let table = SeriesTable::read_csv(&a.csv, a.targets.as_deref())?;
    let model_args = parse_model_args(a.model_args.as_deref())?;
    let cfg = adapt_config(&base, context, horizon, table.channels(), &model_args)?;
    let [train_fraction, val_fraction] = a.split[..] else {
        bail!("--split takes two fractions, e.g. 0.7,0.1");
    };
    let run = ForecastConfig {
        train_fraction,
        val_fraction,
        season: a.season,
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        weight_decay: a.weight_decay,
        train_stride: a.train_stride,
        seed: a.seed,
    };
    let data = ForecastData::new(&table, context, horizon, &run)?;
    let params = sequence_param_count(&cfg)?;
    eprintln!(
        "{}: {} rows x {} channels ({}); {} ({params} parameters), {context} -> {horizon} \
         steps; {} training windows",
        a.csv.display(),
        table.len(),
        table.channels(),
        table.names.join(", "),
        cfg.architecture(),
        data.train_origins(a.train_stride).len()
    );
    let start = std::time::Instant::now();
    let trained = train_forecaster(&cfg, &data, &run, device, |e| {
        eprintln!(
            "epoch {:>3}  train MSE {:.4}  val MSE {:.4}  MAE {:.4}  ({:.1} s)",
            e.epoch, e.train_loss, e.val.mse, e.val.mae, e.seconds
        );
    })?;
    let seconds = start.elapsed().as_secs_f64();
    let (model, report) = (trained.model, trained.report);
    save_sequence_dir(&a.out, &cfg, &trained.tensors)?;
    let summary = json!({
        "csv": a.csv,
        "columns": table.names,
        "mean": data.scaler.mean,
        "std": data.scaler.std,
        "split": [train_fraction, val_fraction],
        "context": context,
        "horizon": horizon,
        "model": a.model,
        "parameters": params,
        "best_epoch": report.best_epoch,
        "seconds": seconds,
        "test_windows": report.test_windows,
        "test": metrics_json(&report),
    });
    std::fs::write(
        a.out.join("forecast.json"),
        serde_json::to_string_pretty(&summary)?,
    )
    .with_context(|| format!("cannot write {}", a.out.join("forecast.json").display()))?;
    print_report(&report, a.season);
    eprintln!(
        "saved the best epoch's model to {} ({seconds:.0} s)",
        a.out.display()
    );
    if let Some(path) = &a.plot {
        let figure = forecast_figure(&table, &data, model.as_ref(), a.season, &a.model, device)?;
        figure.save(path)?;
        eprintln!("plot: {}", path.display());
    }
    Ok(())
}

fn metrics_json(r: &ForecastReport) -> Value {
    let m = |x: &Metrics| json!({"mse": x.mse, "mae": x.mae});
    json!({
        "model": m(&r.model),
        "naive": m(&r.naive),
        "seasonal_naive": r.seasonal.as_ref().map(m),
    })
}

fn print_report(r: &ForecastReport, season: Option<usize>) {
    println!(
        "test ({} windows, standardised values; best epoch {}):",
        r.test_windows, r.best_epoch
    );
    println!("  {:<22} {:>8} {:>8}", "forecast", "MSE", "MAE");
    println!(
        "  {:<22} {:>8.4} {:>8.4}",
        "model", r.model.mse, r.model.mae
    );
    println!(
        "  {:<22} {:>8.4} {:>8.4}",
        "naive (last value)", r.naive.mse, r.naive.mae
    );
    if let (Some(s), Some(m)) = (&r.seasonal, season) {
        println!(
            "  {:<22} {:>8.4} {:>8.4}",
            format!("seasonal naive ({m})"),
            s.mse,
            s.mae
        );
    }
}

/// One panel per channel: the end of the first test window's context, the truth after it, and
/// the model's, the naive and the seasonal-naive forecasts, in the series' units.
fn forecast_figure(
    table: &SeriesTable,
    data: &ForecastData,
    model: &dyn tokenmix::models::sequence::SequenceModel,
    season: Option<usize>,
    name: &str,
    device: &Device,
) -> Result<Figure> {
    let origin = *data
        .test_origins()
        .first()
        .context("the test part has no window")?;
    let forecast = predict_windows(model, data, &[origin], 1, device)?.remove(0);
    let naive = data.naive(origin);
    let seasonal = season.map(|m| data.seasonal_naive(origin, m));
    let history = data.context.min(3 * data.horizon);
    let scaler = &data.scaler;
    let panels = (0..table.channels())
        .map(|j| {
            let line = |name: &str, from: i64, vals: Vec<f32>| Series {
                name: name.to_string(),
                points: vals
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| ((from + i as i64) as f64, scaler.invert(j, v) as f64))
                    .collect(),
            };
            let col = |rows: &[Vec<f32>]| rows.iter().map(|r| r[j]).collect::<Vec<f32>>();
            let past = &data.values[origin - history..origin + data.horizon];
            let mut lines = vec![
                line("observed", -(history as i64), col(past)),
                line(name, 0, col(&forecast)),
                line("naive", 0, col(&naive)),
            ];
            if let (Some(s), Some(m)) = (&seasonal, season) {
                lines.push(line(&format!("seasonal naive ({m})"), 0, col(s)));
            }
            Panel {
                title: table.names[j].clone(),
                x_label: "steps from the forecast origin".into(),
                y_label: table.names[j].clone(),
                log_x: false,
                kind: PanelKind::Lines(lines),
            }
        })
        .collect();
    let at = table
        .index
        .get(origin)
        .cloned()
        .unwrap_or_else(|| format!("row {origin}"));
    Ok(Figure {
        title: format!("forecast from {at} (first test window)"),
        panels,
    })
}

/// `forecast.json` of a directory `train` wrote: the columns and the standardisation.
fn read_summary(dir: &Path) -> Result<Option<(Vec<String>, Standardizer)>> {
    let path = dir.join("forecast.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let floats = |key: &str| -> Result<Vec<f32>> {
        v[key]
            .as_array()
            .with_context(|| format!("{}: no {key} list", path.display()))?
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32).context("not a number"))
            .collect()
    };
    let columns = v["columns"]
        .as_array()
        .with_context(|| format!("{}: no columns list", path.display()))?
        .iter()
        .map(|c| {
            c.as_str()
                .map(str::to_string)
                .context("a column is not a string")
        })
        .collect::<Result<Vec<_>>>()?;
    let (mean, std) = (floats("mean")?, floats("std")?);
    if mean.len() != columns.len() || std.len() != columns.len() {
        bail!("{}: columns, mean and std differ in length", path.display());
    }
    Ok(Some((columns, Standardizer { mean, std })))
}

fn predict(a: &PredictArgs, device: &Device) -> Result<()> {
    let loaded = load_sequence_dir(&a.model_dir, device)?;
    let SequenceTask::Forecast { context_length, .. } = loaded.config.task() else {
        bail!("{} is not a forecasting model", a.model_dir.display());
    };
    let summary = read_summary(&a.model_dir)?;
    let targets = a
        .targets
        .clone()
        .or_else(|| summary.as_ref().map(|(c, _)| c.clone()));
    let table = SeriesTable::read_csv(&a.csv, targets.as_deref())?;
    if table.len() < context_length {
        bail!(
            "{} has {} rows; the model reads the last {context_length}",
            a.csv.display(),
            table.len()
        );
    }
    let rows = &table.values[table.len() - context_length..];
    let scaler = match summary {
        Some((_, s)) if s.mean.len() == table.channels() => s,
        Some(_) => bail!("forecast.json's columns do not match the CSV's"),
        None => Standardizer {
            mean: vec![0.0; table.channels()],
            std: vec![1.0; table.channels()],
        },
    };
    let flat: Vec<f32> = scaler.apply(rows).concat();
    let x = Tensor::from_vec(flat, (1, context_length, table.channels()), device)?;
    let y = loaded.forward(&x)?.squeeze(0)?.to_vec2::<f32>()?;
    let picked = y.first().map_or(0, Vec::len);
    let names: Vec<&str> = if picked == table.channels() {
        table.names.iter().map(String::as_str).collect()
    } else {
        (0..picked).map(|_| "channel").collect()
    };
    println!("step,{}", names.join(","));
    for (h, row) in y.iter().enumerate() {
        let vals: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(j, &v)| {
                let v = if picked == table.channels() {
                    scaler.invert(j, v)
                } else {
                    v
                };
                format!("{v}")
            })
            .collect();
        println!("{},{}", h + 1, vals.join(","));
    }
    Ok(())
}
