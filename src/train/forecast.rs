//! Forecasting multivariate series read from CSV files with tokenmix's sequence models
//! ([`tokenmix_models::sequence`]): training from scratch, evaluation against the naive
//! baselines, and prediction.
//!
//! The series is split in time order into train, validation and test parts. Values are
//! standardised per channel with the training part's mean and standard deviation, and every
//! metric is on that scale (as the forecasting literature reports ETT and Weather). A sample is
//! a window: the `context_length` steps before a forecast origin `t` and the
//! `prediction_length` steps from `t` on; windows of a part have their origin (and whole
//! horizon) inside it, their context may reach back into the part before. Training minimises
//! the mean squared error with AdamW and a cosine schedule and keeps the weights of the epoch
//! with the lowest validation error.
//!
//! Baselines: the naive forecast (the last observed value, repeated) and the seasonal naive
//! forecast (the value one season earlier, `y[t + h] = y[t + h - m * ceil((h + 1) / m)]`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokenmix_models::sequence::{SequenceConfig, SequenceModel, SequenceTask};

use super::error::{bail, Context, Result};
use super::optim::{AdamW, AdamWConfig};
use super::schedule::WarmupCosine;

/// A multivariate series: named numeric columns of a CSV file, in row order.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesTable {
    /// Column names of the channels, in order.
    pub names: Vec<String>,
    /// `values[row][channel]`.
    pub values: Vec<Vec<f32>>,
    /// The first column's text per row when it is not one of the channels (the timestamps).
    pub index: Vec<String>,
}

/// Most rows and channels read from a CSV file.
pub const MAX_ROWS: usize = 50_000_000;
/// Most channels.
pub const MAX_CHANNELS: usize = 4096;

impl SeriesTable {
    /// Reads a CSV file with a header. `targets` names the channel columns (in that order);
    /// without it every column but the first is one when the first holds a non-number
    /// (timestamps), else every column. A missing column, an empty or non-numeric cell of a
    /// channel, or a non-finite value is an error naming the row and column.
    pub fn read_csv(path: &Path, targets: Option<&[String]>) -> Result<Self> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .from_path(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let header: Vec<String> = reader
            .headers()
            .with_context(|| format!("{}: cannot read the header", path.display()))?
            .iter()
            .map(str::to_string)
            .collect();
        let records: Vec<csv::StringRecord> = reader
            .records()
            .take(MAX_ROWS + 1)
            .collect::<std::result::Result<_, _>>()
            .with_context(|| format!("{}: malformed CSV", path.display()))?;
        if records.len() > MAX_ROWS {
            bail!("{}: more than {MAX_ROWS} rows", path.display());
        }
        let Some(first) = records.first() else {
            bail!("{}: no rows after the header", path.display());
        };
        let columns: Vec<usize> = match targets {
            Some(names) => names
                .iter()
                .map(|n| {
                    header.iter().position(|h| h == n).with_context(|| {
                        format!(
                            "{}: no column {n:?} (columns: {})",
                            path.display(),
                            header.join(", ")
                        )
                    })
                })
                .collect::<Result<_>>()?,
            None => {
                let first_is_time = first.get(0).is_some_and(|c| c.parse::<f64>().is_err());
                (usize::from(first_is_time)..header.len()).collect()
            }
        };
        if columns.is_empty() || columns.len() > MAX_CHANNELS {
            bail!(
                "{}: {} channel columns; need 1..={MAX_CHANNELS}",
                path.display(),
                columns.len()
            );
        }
        let index_col = (!columns.contains(&0)).then_some(0);
        let mut values = Vec::with_capacity(records.len());
        let mut index = Vec::new();
        for (r, rec) in records.iter().enumerate() {
            let row = columns
                .iter()
                .map(|&c| {
                    let cell = rec.get(c).unwrap_or("");
                    match cell.parse::<f32>() {
                        Ok(v) if v.is_finite() => Ok(v),
                        _ => bail!(
                            "{}: row {} column {:?}: {cell:?} is not a finite number",
                            path.display(),
                            r + 2,
                            header.get(c).map_or("?", String::as_str)
                        ),
                    }
                })
                .collect::<Result<Vec<f32>>>()?;
            values.push(row);
            if let Some(i) = index_col {
                index.push(rec.get(i).unwrap_or("").to_string());
            }
        }
        Ok(Self {
            names: columns.iter().map(|&c| header[c].clone()).collect(),
            values,
            index,
        })
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Channels.
    pub fn channels(&self) -> usize {
        self.names.len()
    }
}

/// Per-channel standardisation `(x - mean) / std` fitted on rows `0..rows`.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    /// Channel means.
    pub mean: Vec<f32>,
    /// Channel standard deviations (population; 1 where a channel is constant).
    pub std: Vec<f32>,
}

impl Standardizer {
    /// Fits the first `rows` rows of `values`.
    pub fn fit(values: &[Vec<f32>], rows: usize) -> Self {
        let c = values.first().map_or(0, Vec::len);
        let n = rows.max(1) as f64;
        let mut mean = vec![0f64; c];
        let mut sq = vec![0f64; c];
        for row in &values[..rows] {
            for (j, &v) in row.iter().enumerate() {
                mean[j] += v as f64 / n;
            }
        }
        for row in &values[..rows] {
            for (j, &v) in row.iter().enumerate() {
                sq[j] += (v as f64 - mean[j]).powi(2) / n;
            }
        }
        let std = sq
            .iter()
            .map(|&s| if s > 0.0 { s.sqrt() as f32 } else { 1.0 })
            .collect();
        Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        }
    }

    /// The standardised rows.
    pub fn apply(&self, values: &[Vec<f32>]) -> Vec<Vec<f32>> {
        values
            .iter()
            .map(|row| {
                row.iter()
                    .enumerate()
                    .map(|(j, &v)| (v - self.mean[j]) / self.std[j])
                    .collect()
            })
            .collect()
    }

    /// Value `v` of channel `j` back on the original scale.
    pub fn invert(&self, j: usize, v: f32) -> f32 {
        v * self.std[j] + self.mean[j]
    }
}

/// Settings of a forecasting run.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastConfig {
    /// Fraction of the rows (from the start) for training.
    pub train_fraction: f64,
    /// Fraction after it for validation; the rest is the test part.
    pub val_fraction: f64,
    /// Season of the seasonal naive baseline, in steps (e.g. 24 for hourly data); `None`
    /// leaves that baseline out.
    pub season: Option<usize>,
    /// Passes over the training windows.
    pub epochs: usize,
    /// Windows per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Steps between training windows' origins (1: every origin).
    pub train_stride: usize,
    /// Seed of the initial weights and the window order.
    pub seed: u64,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        Self {
            train_fraction: 0.7,
            val_fraction: 0.1,
            season: None,
            epochs: 10,
            batch_size: 32,
            lr: 1e-3,
            weight_decay: 0.01,
            train_stride: 1,
            seed: 0,
        }
    }
}

/// Mean squared and mean absolute error over every predicted value.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Metrics {
    /// Mean squared error.
    pub mse: f64,
    /// Mean absolute error.
    pub mae: f64,
}

impl Metrics {
    fn of(sum_sq: f64, sum_abs: f64, n: usize) -> Self {
        let n = n.max(1) as f64;
        Self {
            mse: sum_sq / n,
            mae: sum_abs / n,
        }
    }
}

/// One epoch of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss (MSE) over the epoch's steps.
    pub train_loss: f64,
    /// Validation metrics after the epoch.
    pub val: Metrics,
    /// Seconds the epoch took (training and validation).
    pub seconds: f64,
}

/// What a run measured: the test metrics of the model (at its best validation epoch) and of
/// the baselines, on the standardised scale.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastReport {
    /// Every epoch.
    pub epochs: Vec<EpochLog>,
    /// The epoch whose weights were kept (1-based).
    pub best_epoch: usize,
    /// The model on the test windows.
    pub model: Metrics,
    /// The naive forecast on the same windows.
    pub naive: Metrics,
    /// The seasonal naive forecast, with a season.
    pub seasonal: Option<Metrics>,
    /// Test windows.
    pub test_windows: usize,
}

/// The time-ordered parts of a series and its standardised values.
#[derive(Debug, Clone)]
pub struct ForecastData {
    /// Standardised `values[row][channel]`.
    pub values: Vec<Vec<f32>>,
    /// The standardisation (fitted on the training part).
    pub scaler: Standardizer,
    /// First row of the validation part.
    pub val_start: usize,
    /// First row of the test part.
    pub test_start: usize,
    /// Steps read per window.
    pub context: usize,
    /// Steps predicted per window.
    pub horizon: usize,
}

impl ForecastData {
    /// Splits and standardises `table` for windows of `context` steps in and `horizon` out;
    /// each part must hold at least one window's horizon, and the training part a whole
    /// window.
    pub fn new(
        table: &SeriesTable,
        context: usize,
        horizon: usize,
        cfg: &ForecastConfig,
    ) -> Result<Self> {
        let (tf, vf) = (cfg.train_fraction, cfg.val_fraction);
        if !(tf > 0.0 && vf >= 0.0 && tf + vf < 1.0) {
            bail!("train and validation fractions must be positive and sum to less than 1, got {tf} and {vf}");
        }
        let n = table.len();
        let val_start = (n as f64 * tf + 1e-9) as usize;
        let test_start = (n as f64 * (tf + vf) + 1e-9) as usize;
        if val_start < context + horizon {
            bail!(
                "the training part ({val_start} of {n} rows) is shorter than one window \
                 (context {context} + horizon {horizon})"
            );
        }
        if n - test_start < horizon || (vf > 0.0 && test_start - val_start < horizon) {
            bail!(
                "the validation ({}) or test ({}) part is shorter than the horizon {horizon}",
                test_start - val_start,
                n - test_start
            );
        }
        let scaler = Standardizer::fit(&table.values, val_start);
        Ok(Self {
            values: scaler.apply(&table.values),
            scaler,
            val_start,
            test_start,
            context,
            horizon,
        })
    }

    /// Forecast origins of the training windows (every `stride`-th).
    pub fn train_origins(&self, stride: usize) -> Vec<usize> {
        (self.context..=self.val_start - self.horizon)
            .step_by(stride.max(1))
            .collect()
    }

    /// Forecast origins of the validation windows.
    pub fn val_origins(&self) -> Vec<usize> {
        self.origins(self.val_start, self.test_start)
    }

    /// Forecast origins of the test windows.
    pub fn test_origins(&self) -> Vec<usize> {
        self.origins(self.test_start, self.values.len())
    }

    fn origins(&self, start: usize, end: usize) -> Vec<usize> {
        if end < start + self.horizon {
            return Vec::new();
        }
        (start.max(self.context)..=end - self.horizon).collect()
    }

    /// The contexts `(B, context, C)` and targets `(B, horizon, C)` of windows at `origins`.
    pub fn batch(&self, origins: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let c = self.values.first().map_or(0, Vec::len);
        let gather = |from: &dyn Fn(usize) -> usize, len: usize| -> Vec<f32> {
            origins
                .iter()
                .flat_map(|&t| (0..len).flat_map(move |i| self.values[from(t) + i].iter().copied()))
                .collect()
        };
        let x = gather(&|t| t - self.context, self.context);
        let y = gather(&|t| t, self.horizon);
        let b = origins.len();
        Ok((
            Tensor::from_vec(x, (b, self.context, c), device)?,
            Tensor::from_vec(y, (b, self.horizon, c), device)?,
        ))
    }

    /// The naive forecast of the window at `origin`: `[horizon][channel]`.
    pub fn naive(&self, origin: usize) -> Vec<Vec<f32>> {
        vec![self.values[origin - 1].clone(); self.horizon]
    }

    /// The seasonal naive forecast of the window at `origin` with season `m`.
    pub fn seasonal_naive(&self, origin: usize, m: usize) -> Vec<Vec<f32>> {
        (0..self.horizon)
            .map(|h| {
                let back = m * (h / m + 1);
                self.values[(origin + h).saturating_sub(back)].clone()
            })
            .collect()
    }

    /// The metrics of `forecast` (one `[horizon][channel]` per origin) against the truth.
    pub fn score(&self, origins: &[usize], forecast: impl Fn(usize) -> Vec<Vec<f32>>) -> Metrics {
        let (mut sq, mut abs, mut n) = (0f64, 0f64, 0usize);
        for &t in origins {
            for (h, row) in forecast(t).iter().enumerate() {
                for (j, &p) in row.iter().enumerate() {
                    let e = (p - self.values[t + h][j]) as f64;
                    sq += e * e;
                    abs += e.abs();
                    n += 1;
                }
            }
        }
        Metrics::of(sq, abs, n)
    }
}

/// The model's forecasts of the windows at `origins`, `[origin][horizon][channel]`, in
/// batches of `batch_size`.
pub fn predict_windows(
    model: &dyn SequenceModel,
    data: &ForecastData,
    origins: &[usize],
    batch_size: usize,
    device: &Device,
) -> Result<Vec<Vec<Vec<f32>>>> {
    let mut out = Vec::with_capacity(origins.len());
    for chunk in origins.chunks(batch_size.max(1)) {
        let (x, _) = data.batch(chunk, device)?;
        let y = model.forward(&x)?;
        out.extend(y.to_dtype(DType::F32)?.to_vec3::<f32>()?);
    }
    Ok(out)
}

/// The metrics of `model` on the windows at `origins`.
pub fn evaluate_model(
    model: &dyn SequenceModel,
    data: &ForecastData,
    origins: &[usize],
    batch_size: usize,
    device: &Device,
) -> Result<Metrics> {
    let preds = predict_windows(model, data, origins, batch_size, device)?;
    let by_origin: HashMap<usize, &Vec<Vec<f32>>> = origins.iter().copied().zip(&preds).collect();
    Ok(data.score(origins, |t| by_origin[&t].clone()))
}

/// The config `base` adapted to a series: its context length, horizon and channel count set
/// (under the keys [`forecast_keys`](tokenmix_models::sequence::SequenceArchitecture::forecast_keys)
/// names), `model_args` (reference config keys) applied over them, and the
/// result read back through the reference's config path (so it is validated as a hub config
/// is, and the patch count follows the new context).
pub fn adapt_config(
    base: &SequenceConfig,
    context: usize,
    horizon: usize,
    channels: usize,
    model_args: &serde_json::Map<String, serde_json::Value>,
) -> Result<SequenceConfig> {
    let mut json = base.to_hf_config();
    let map = json
        .as_object_mut()
        .with_context(|| "a sequence config is not a JSON object")?;
    let [context_key, horizon_key, channels_key] = base.forecast_keys();
    map.insert(context_key.into(), context.into());
    map.insert(horizon_key.into(), horizon.into());
    map.insert(channels_key.into(), channels.into());
    map.remove("num_patches");
    for (k, v) in model_args {
        map.insert(k.clone(), v.clone());
    }
    Ok(SequenceConfig::from_hf_json(
        &json,
        &format!(
            "{} for this series (context, horizon, channels and model_args)",
            base.architecture()
        ),
    )?)
}

/// A freshly initialised parameter as PyTorch initialises these layers: linear weights
/// `U(-1/sqrt(in), 1/sqrt(in))`, biases 0, norm gains 1, batch-norm statistics 0 and 1.
fn initial_value(name: &str, shape: &[usize], rng: &mut impl Rng, dev: &Device) -> Result<Tensor> {
    let fill = |v: f32| Tensor::full(v, shape, dev);
    let leaf = name.rsplit('.').next().unwrap_or(name);
    Ok(match (leaf, shape.len()) {
        ("running_var", _) => fill(1.0)?,
        ("running_mean" | "bias", _) => fill(0.0)?,
        ("weight", 1) => fill(1.0)?,
        _ => {
            let fan_in = shape.last().copied().unwrap_or(1).max(1);
            let bound = (fan_in as f32).powf(-0.5);
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
            Tensor::from_vec(v, shape, dev)?
        }
    })
}

/// Builds `cfg` with trainable, freshly initialised parameters under the reference's names.
pub fn init_model(
    cfg: &SequenceConfig,
    seed: u64,
    device: &Device,
) -> Result<(Box<dyn SequenceModel>, VarMap)> {
    let varmap = VarMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (name, shape) in tokenmix_models::sequence::sequence_tensors(cfg)? {
        let value = initial_value(&name, &shape, &mut rng, device)?;
        varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::msg("variable map poisoned"))?
            .insert(name, Var::from_tensor(&value)?);
    }
    let model = cfg.build(VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    Ok((model, varmap))
}

/// The parameters of `varmap` as plain tensors, by name.
pub fn snapshot(varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::msg("variable map poisoned"))?;
    data.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
        .collect()
}

/// A trained forecaster: the model at its best validation epoch, its parameters by name (the
/// reference's names, ready for
/// [`save_sequence_dir`](tokenmix_models::sequence::save_sequence_dir)), and what the run
/// measured.
#[derive(Debug)]
pub struct TrainedForecaster {
    /// The model.
    pub model: Box<dyn SequenceModel>,
    /// Its parameters.
    pub tensors: HashMap<String, Tensor>,
    /// Epochs and test metrics.
    pub report: ForecastReport,
}

/// Trains a forecaster of architecture `cfg` on `data` (see the [module docs](self)), calling
/// `progress` after every epoch.
pub fn train_forecaster(
    cfg: &SequenceConfig,
    data: &ForecastData,
    run: &ForecastConfig,
    device: &Device,
    mut progress: impl FnMut(&EpochLog),
) -> Result<TrainedForecaster> {
    let SequenceTask::Forecast {
        context_length,
        prediction_length,
        ..
    } = cfg.task()
    else {
        bail!("{} is not a forecaster", cfg.architecture());
    };
    if (context_length, prediction_length) != (data.context, data.horizon) {
        bail!(
            "the model reads {context_length} steps and predicts {prediction_length}; the data \
             windows are {} and {}",
            data.context,
            data.horizon
        );
    }
    if run.epochs == 0 || run.batch_size == 0 {
        bail!("epochs and batch size must be at least 1");
    }
    let (model, varmap) = init_model(cfg, run.seed, device)?;
    let params = super::trainable(&varmap);
    let adamw = AdamWConfig {
        lr: run.lr,
        weight_decay: run.weight_decay,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(params, adamw)?;
    let mut origins = data.train_origins(run.train_stride);
    let steps_per_epoch = origins.len().div_ceil(run.batch_size);
    let schedule = WarmupCosine {
        base_lr: run.lr,
        warmup_lr: run.lr * 0.01,
        min_lr: run.lr * 0.01,
        warmup_steps: steps_per_epoch.min(100),
        total_steps: steps_per_epoch * run.epochs,
    };
    let val = data.val_origins();
    let mut rng = rand::rngs::StdRng::seed_from_u64(run.seed ^ 0x5eed);
    let (mut best, mut best_epoch, mut best_mse) = (snapshot(&varmap)?, 0, f64::INFINITY);
    let mut epochs = Vec::with_capacity(run.epochs);
    for epoch in 1..=run.epochs {
        let start = std::time::Instant::now();
        origins.shuffle(&mut rng);
        let mut loss_sum = 0f64;
        for chunk in origins.chunks(run.batch_size) {
            let (x, y) = data.batch(chunk, device)?;
            let pred = model.forward_t(&x, None, true)?;
            let loss = (pred - y)?.sqr()?.mean_all()?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            opt.set_lr(schedule.lr(opt.steps()));
            opt.step(&loss.backward()?)?;
        }
        let val_metrics = if val.is_empty() {
            Metrics::default()
        } else {
            evaluate_model(model.as_ref(), data, &val, run.batch_size * 4, device)?
        };
        if val.is_empty() || val_metrics.mse < best_mse {
            best_mse = val_metrics.mse;
            best_epoch = epoch;
            best = snapshot(&varmap)?;
        }
        let log = EpochLog {
            epoch,
            train_loss: loss_sum / steps_per_epoch.max(1) as f64,
            val: val_metrics,
            seconds: start.elapsed().as_secs_f64(),
        };
        progress(&log);
        epochs.push(log);
    }
    let model = cfg.build(VarBuilder::from_tensors(best.clone(), DType::F32, device))?;
    let test = data.test_origins();
    let report = ForecastReport {
        model: evaluate_model(model.as_ref(), data, &test, run.batch_size * 4, device)?,
        naive: data.score(&test, |t| data.naive(t)),
        seasonal: run
            .season
            .map(|m| data.score(&test, |t| data.seasonal_naive(t, m))),
        test_windows: test.len(),
        epochs,
        best_epoch,
    };
    Ok(TrainedForecaster {
        model,
        tensors: best,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: usize) -> SeriesTable {
        SeriesTable {
            names: vec!["a".into(), "b".into()],
            values: (0..rows)
                .map(|i| vec![(i % 24) as f32, (i as f32 * 0.1).sin()])
                .collect(),
            index: Vec::new(),
        }
    }

    #[test]
    fn windows_stay_inside_their_parts_and_baselines_index_the_past() {
        let cfg = ForecastConfig::default();
        let data = ForecastData::new(&table(1000), 48, 12, &cfg).unwrap();
        assert_eq!((data.val_start, data.test_start), (700, 800));
        let train = data.train_origins(1);
        assert_eq!((train[0], *train.last().unwrap()), (48, 688));
        let test = data.test_origins();
        assert_eq!((test[0], *test.last().unwrap()), (800, 988));
        // A season of 24 repeats the first channel exactly.
        let seasonal = data.score(&test, |t| data.seasonal_naive(t, 24));
        let values = &data.values;
        let perfect: Vec<f64> = test
            .iter()
            .flat_map(|&t| {
                let f = data.seasonal_naive(t, 24);
                (0..12).map(move |h| (f[h][0] - values[t + h][0]) as f64)
            })
            .collect();
        assert!(perfect.iter().all(|e| e.abs() < 1e-5));
        assert!(seasonal.mse > 0.0, "the second channel is not 24-periodic");
        // The naive forecast repeats the value just before the origin.
        assert_eq!(data.naive(800)[11], data.values[799]);
    }

    #[test]
    fn parts_too_short_for_a_window_are_refused() {
        let cfg = ForecastConfig::default();
        let err = ForecastData::new(&table(100), 64, 16, &cfg).unwrap_err();
        assert!(err.to_string().contains("training part"), "{err}");
    }
}
