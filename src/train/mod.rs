//! Training and fine-tuning zoo models on image-folder datasets.
//!
//! [`Trainer`] holds a model whose parameters live in a `VarMap` under their checkpoint names,
//! an [`AdamW`] optimizer (no decay on norms, biases and scales), a
//! [`WarmupCosine`] schedule, Mixup/CutMix with label smoothing
//! ([`mixup`]) and timm's augmentation ([`data`]). Checkpoints are hub-style directories
//! (`config.json` + `model.safetensors`, which [`tokenmix_models::load_model_dir`] loads
//! bit-exactly) plus `optimizer.safetensors` and `trainer.json` for resuming.

pub mod data;
pub mod error;
pub mod forecast;
pub mod init;
pub mod mixup;
pub mod optim;
pub mod schedule;
pub mod text;

use std::collections::HashMap;
use std::path::Path;

use crate::train::error::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenmix_models::{model_entry, ArchConfig, ImageModel, PretrainedCfg};

use data::{eval_batch, train_batch, Augment, ImageFolder};
use mixup::{soft_cross_entropy, soft_targets, MixConfig};
use optim::{AdamW, AdamWConfig};
use schedule::WarmupCosine;

/// Hyper-parameters of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the training split.
    pub epochs: usize,
    /// Images per optimizer step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f64,
    /// Learning rate at the first step of warmup.
    pub warmup_lr: f64,
    /// Epochs of linear warmup.
    pub warmup_epochs: usize,
    /// Decoupled weight decay of the decayed parameters.
    pub weight_decay: f64,
    /// Stochastic depth of the last block; `None` keeps the architecture's (0 unless its
    /// `model_args` set `drop_path_rate`).
    pub drop_path: Option<f64>,
    /// Mixup, CutMix and label smoothing.
    pub mix: MixConfig,
    /// Train-time augmentation.
    pub augment: Augment,
    /// Seed of initialization, shuffling, augmentation and mixing.
    pub seed: u64,
}

impl TrainConfig {
    /// Checks every setting is in its range, naming the first one that is not.
    pub fn validate(&self) -> Result<()> {
        let unit = |v: f64| (0.0..=1.0).contains(&v);
        let (lo, hi) = self.augment.scale;
        let checks = [
            (self.epochs > 0, "epochs must be at least 1"),
            (self.batch_size > 0, "the batch size must be at least 1"),
            (
                self.lr > 0.0 && self.lr.is_finite(),
                "the learning rate must be positive",
            ),
            (
                self.min_lr >= 0.0 && self.warmup_lr >= 0.0,
                "learning rates must not be negative",
            ),
            (
                self.weight_decay >= 0.0,
                "weight decay must not be negative",
            ),
            (
                self.drop_path.is_none_or(|d| (0.0..1.0).contains(&d)),
                "drop path must be in [0, 1)",
            ),
            (
                unit(self.mix.label_smoothing),
                "label smoothing must be in [0, 1]",
            ),
            (
                unit(self.mix.prob) && unit(self.mix.switch_prob),
                "mix probabilities must be in [0, 1]",
            ),
            (
                self.mix.mixup_alpha >= 0.0 && self.mix.cutmix_alpha >= 0.0,
                "mixup and cutmix alphas must not be negative",
            ),
            (
                lo > 0.0 && lo <= hi && hi <= 1.0,
                "the crop scale range must lie in (0, 1] with min <= max",
            ),
            (
                self.augment.ratio.0 > 0.0 && self.augment.ratio.0 <= self.augment.ratio.1,
                "the crop ratio range must be positive with min <= max",
            ),
            (
                unit(self.augment.hflip),
                "the flip probability must be in [0, 1]",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, msg)) => bail!("{msg}"),
            None => Ok(()),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 64,
            lr: 1e-3,
            min_lr: 1e-5,
            warmup_lr: 1e-6,
            warmup_epochs: 2,
            weight_decay: 0.05,
            drop_path: None,
            mix: MixConfig::default(),
            augment: Augment::default(),
            seed: 0,
        }
    }
}

/// What a checkpoint's `config.json` says about the model: everything needed to rebuild it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Zoo name of the architecture.
    pub architecture: String,
    /// timm-style keyword overrides of the architecture.
    pub model_args: Map<String, Value>,
    /// Input size, normalization and crop of the model.
    pub pretrained_cfg: PretrainedCfg,
    /// Class names, one per logit.
    pub label_names: Vec<String>,
}

impl ModelSpec {
    /// A spec for zoo model `architecture` with `model_args`, classifying `classes`, taking
    /// `img_size` inputs (default: the zoo's).
    pub fn new(
        architecture: &str,
        model_args: Map<String, Value>,
        classes: Vec<String>,
        img_size: Option<(usize, usize)>,
    ) -> Result<Self> {
        let entry = model_entry(architecture)?;
        let mut pretrained_cfg = entry.pretrained_cfg();
        if let Some(size) = img_size {
            pretrained_cfg.set_image_size(size);
        }
        if let Some(c) = model_args.get("in_chans").and_then(Value::as_u64) {
            let (h, w) = pretrained_cfg.image_size();
            pretrained_cfg.input_size = vec![c as usize, h, w];
            if c == 1 {
                pretrained_cfg.mean = vec![0.5];
                pretrained_cfg.std = vec![0.5];
            }
        }
        pretrained_cfg.num_classes = classes.len();
        let mut spec = Self {
            architecture: entry.name.to_string(),
            model_args,
            pretrained_cfg,
            label_names: classes,
        };
        spec.fit_fixed_size()?;
        spec.validate()?;
        Ok(spec)
    }

    /// Sets the input size of a model built for one size (its `model_args`' `img_size`) to that
    /// size, as the loader does: images of any other size would not fit it.
    pub fn fit_fixed_size(&mut self) -> Result<()> {
        if let Some(size) = self.arch()?.fixed_image_size() {
            self.pretrained_cfg.set_image_size(size);
        }
        Ok(())
    }

    /// Checks what training needs: at least two classes and a positive input size (image
    /// folders further need 1 or 3 channels, checked when images are loaded).
    pub fn validate(&self) -> Result<()> {
        if self.label_names.len() < 2 {
            bail!(
                "training needs at least 2 classes, got {}",
                self.label_names.len()
            );
        }
        let (h, w) = self.pretrained_cfg.image_size();
        if h == 0 || w == 0 {
            bail!("the input size must be positive, got {h}x{w}");
        }
        Ok(())
    }

    /// Reads the spec of a hub-style model directory's `config.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        let architecture = v["architecture"]
            .as_str()
            .with_context(|| format!("{} has no \"architecture\"", path.display()))?;
        let entry = model_entry(architecture)?;
        let pretrained_cfg = match v.get("pretrained_cfg") {
            Some(c) => serde_json::from_value(c.clone())
                .with_context(|| format!("bad pretrained_cfg in {}", path.display()))?,
            None => entry.pretrained_cfg(),
        };
        let num_classes = v["num_classes"].as_u64().map(|n| n as usize);
        let label_names = match v.get("label_names").and_then(Value::as_array) {
            Some(names) => names
                .iter()
                .map(|n| n.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .with_context(|| format!("label_names in {} must be strings", path.display()))?,
            None => (0..num_classes.unwrap_or(pretrained_cfg.num_classes))
                .map(|i| i.to_string())
                .collect(),
        };
        let model_args = v["model_args"].as_object().cloned().unwrap_or_default();
        let mut spec = Self {
            architecture: entry.name.to_string(),
            model_args,
            pretrained_cfg,
            label_names,
        };
        spec.fit_fixed_size()?;
        Ok(spec)
    }

    /// The architecture, resolved as the loader resolves `config.json`.
    pub fn arch(&self) -> Result<ArchConfig> {
        Ok(tokenmix_models::loader::resolve_arch(
            model_entry(&self.architecture)?,
            Some(&self.pretrained_cfg),
            Some(self.label_names.len()),
            &self.model_args_without_classes(),
        )?)
    }

    /// `model_args` but `num_classes`, which `label_names` decides.
    fn model_args_without_classes(&self) -> Map<String, Value> {
        let mut args = self.model_args.clone();
        args.remove("num_classes");
        args
    }

    /// The `config.json` the loader reads.
    pub fn config_json(&self) -> Value {
        serde_json::json!({
            "architecture": self.architecture,
            "num_classes": self.label_names.len(),
            "num_features": Value::Null,
            "model_args": self.model_args_without_classes(),
            "pretrained_cfg": self.pretrained_cfg,
            "label_names": self.label_names,
        })
    }
}

/// Loss and accuracy on a validation split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalStats {
    /// Mean cross-entropy against the true labels.
    pub loss: f64,
    /// Top-1 accuracy, percent.
    pub top1: f64,
    /// Top-5 accuracy (top-k for fewer than 5 classes), percent.
    pub top5: f64,
}

/// One epoch's record, for logs and plots.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss (against the mixed, smoothed targets).
    pub train_loss: f64,
    /// Validation results, when there is a validation split.
    pub val: Option<EvalStats>,
    /// Training throughput, images per second.
    pub images_per_sec: f64,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
}

/// Progress of one optimizer step, for progress bars.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// Step within the epoch, 1-based.
    pub step: usize,
    /// Steps in the epoch.
    pub steps: usize,
    /// This step's loss.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Images per second so far in the epoch.
    pub images_per_sec: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct TrainerState {
    spec: ModelSpec,
    config: TrainConfig,
    epochs_done: usize,
    steps_per_epoch: usize,
    optimizer_steps: usize,
    history: Vec<EpochStats>,
}

/// A model being trained, with its optimizer, schedule and history.
pub struct Trainer {
    spec: ModelSpec,
    cfg: TrainConfig,
    arch: ArchConfig,
    varmap: VarMap,
    model: Box<dyn ImageModel>,
    opt: AdamW,
    epochs_done: usize,
    steps_per_epoch: usize,
    history: Vec<EpochStats>,
    device: Device,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("spec", &self.spec)
            .field("epochs_done", &self.epochs_done)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// A freshly initialised model of `spec`, to be trained with `cfg` on a split of
    /// `train_len` images.
    pub fn from_scratch(
        spec: ModelSpec,
        cfg: TrainConfig,
        train_len: usize,
        device: &Device,
    ) -> Result<Self> {
        let (arch, varmap) = build(&spec, &cfg, device)?;
        initialise(&arch, &varmap, cfg.seed, device)?;
        Self::assemble(spec, cfg, arch, varmap, train_len, device)
    }

    /// `spec`'s model initialised from the hub-style directory `dir`: every tensor is loaded
    /// but the classifier's, which is re-initialised when its class count differs. Returns the
    /// names of the re-initialised tensors too.
    pub fn fine_tune(
        dir: &Path,
        spec: ModelSpec,
        cfg: TrainConfig,
        train_len: usize,
        device: &Device,
    ) -> Result<(Self, Vec<String>)> {
        let (arch, varmap) = build(&spec, &cfg, device)?;
        initialise(&arch, &varmap, cfg.seed, device)?;
        let weights = read_weights(dir, device)?;
        let classifier = classifier_tensors(&arch)?;
        let mut fresh = Vec::new();
        for (name, var) in sorted_vars(&varmap) {
            match weights.get(&name) {
                Some(t) if t.dims() == var.dims() => var.set(&t.to_dtype(DType::F32)?)?,
                Some(t) if arch.can_resize(&name, t.dims(), var.dims()) => {
                    let resized =
                        arch.resize_tensor(&name, &t.to_dtype(DType::F32)?, var.dims())?;
                    var.set(&resized)?
                }
                Some(_) if classifier.contains(&name) => fresh.push(name),
                Some(t) => bail!(
                    "{name} in {} has shape {:?}, the model needs {:?}",
                    dir.display(),
                    t.dims(),
                    var.dims()
                ),
                None => bail!("{} has no tensor {name}", dir.display()),
            }
        }
        let trainer = Self::assemble(spec, cfg, arch, varmap, train_len, device)?;
        Ok((trainer, fresh))
    }

    /// Resumes the run saved in `dir` by [`save`](Self::save): model, optimizer moments,
    /// schedule position and history.
    pub fn resume(dir: &Path, device: &Device) -> Result<Self> {
        let path = dir.join("trainer.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (is this a training checkpoint?)",
                path.display()
            )
        })?;
        let state: TrainerState = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a trainer state", path.display()))?;
        let (arch, varmap) = build(&state.spec, &state.config, device)?;
        let weights = read_weights(dir, device)?;
        for (name, var) in sorted_vars(&varmap) {
            let t = weights
                .get(&name)
                .with_context(|| format!("{} has no tensor {name}", dir.display()))?;
            if t.dims() != var.dims() {
                bail!("{name} in {} has shape {:?}", dir.display(), t.dims());
            }
            var.set(&t.to_dtype(DType::F32)?)?;
        }
        let params = trainable(&varmap);
        let mut opt = AdamW::new(params, adamw_config(&state.config))?;
        let moments = tokenmix_models::checkpoint::read_checked(
            &dir.join("optimizer.safetensors"),
            "the optimizer state",
            device,
        )?;
        opt.load_state(&moments, state.optimizer_steps)?;
        Ok(Self {
            model: model_from(&arch, &varmap, device)?,
            spec: state.spec,
            cfg: state.config,
            arch,
            varmap,
            opt,
            epochs_done: state.epochs_done,
            steps_per_epoch: state.steps_per_epoch,
            history: state.history,
            device: device.clone(),
        })
    }

    fn assemble(
        spec: ModelSpec,
        cfg: TrainConfig,
        arch: ArchConfig,
        varmap: VarMap,
        train_len: usize,
        device: &Device,
    ) -> Result<Self> {
        spec.validate()?;
        cfg.validate()?;
        let opt = AdamW::new(trainable(&varmap), adamw_config(&cfg))?;
        Ok(Self {
            steps_per_epoch: steps_per_epoch(train_len, cfg.batch_size),
            model: model_from(&arch, &varmap, device)?,
            spec,
            cfg,
            arch,
            varmap,
            opt,
            epochs_done: 0,
            history: Vec::new(),
            device: device.clone(),
        })
    }

    /// The model (evaluate it with `forward`, train-mode outputs with `forward_t`).
    pub fn model(&self) -> &dyn ImageModel {
        self.model.as_ref()
    }

    /// The model's description, as written to `config.json`.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The run's hyper-parameters.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Epochs completed.
    pub fn epochs_done(&self) -> usize {
        self.epochs_done
    }

    /// Every completed epoch's record.
    pub fn history(&self) -> &[EpochStats] {
        &self.history
    }

    /// The learning-rate schedule of the whole run.
    pub fn schedule(&self) -> WarmupCosine {
        WarmupCosine {
            base_lr: self.cfg.lr,
            warmup_lr: self.cfg.warmup_lr,
            min_lr: self.cfg.min_lr,
            warmup_steps: self.cfg.warmup_epochs * self.steps_per_epoch,
            total_steps: self.cfg.epochs * self.steps_per_epoch,
        }
    }

    /// One optimizer step on `images` `(B, C, H, W)` against soft `targets` `(B, K)`; returns
    /// the loss before the step.
    pub fn step(&mut self, images: &Tensor, targets: &Tensor) -> Result<f64> {
        let lr = self.schedule().lr(self.opt.steps());
        self.opt.set_lr(lr);
        let logits = self.model.forward_t(images, true)?;
        let loss = soft_cross_entropy(&logits, targets)?;
        let value = loss.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            bail!(
                "the loss is {value} at step {}; lower the learning rate",
                self.opt.steps()
            );
        }
        self.opt.step(&loss.backward()?)?;
        self.model = model_from(&self.arch, &self.varmap, &self.device)?;
        Ok(value)
    }

    /// One pass over `data` in shuffled batches (the last partial batch is dropped when there
    /// is more than one); `on_step` sees every step. Returns the mean loss.
    pub fn train_epoch(
        &mut self,
        data: &ImageFolder,
        on_step: &mut dyn FnMut(StepStats),
    ) -> Result<f64> {
        let epoch = self.epochs_done as u64;
        let seed = self
            .cfg
            .seed
            .wrapping_add(epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..data.len()).collect();
        order.shuffle(&mut rng);
        let steps = steps_per_epoch(data.len(), self.cfg.batch_size);
        if steps != self.steps_per_epoch {
            bail!(
                "this dataset gives {steps} steps per epoch, the run's schedule was made for {} (a different training split or batch size)",
                self.steps_per_epoch
            );
        }
        let per = self.cfg.batch_size.min(data.len());
        let start = std::time::Instant::now();
        let mut total = 0.0;
        for s in 0..steps {
            let samples: Vec<_> = order[s * per..(s + 1) * per]
                .iter()
                .map(|&i| data.samples[i].clone())
                .collect();
            let aug_seed = splitmix64(seed ^ splitmix64(s as u64 + 1));
            let mut batch = train_batch(
                &samples,
                &self.cfg.augment,
                &self.spec.pretrained_cfg,
                aug_seed,
            )?;
            let classes = self.spec.label_names.len();
            let (targets, _) = self.cfg.mix.apply(
                &mut batch.images,
                batch.shape,
                &batch.labels,
                classes,
                &mut rng,
            );
            let x = batch.tensor(&self.device)?;
            let t = Tensor::from_vec(targets, (batch.labels.len(), classes), &self.device)?;
            let loss = self.step(&x, &t)?;
            total += loss;
            on_step(StepStats {
                step: s + 1,
                steps,
                loss,
                lr: self.opt.lr(),
                images_per_sec: ((s + 1) * per) as f64 / start.elapsed().as_secs_f64(),
            });
        }
        self.epochs_done += 1;
        Ok(total / steps as f64)
    }

    /// Runs the remaining epochs of the run, evaluating on `val` after each, saving to `out`
    /// (and the best model by top-1 to `out/best`) when given; `on_step` and `on_epoch` see the
    /// progress.
    pub fn fit(
        &mut self,
        train: &ImageFolder,
        val: Option<&ImageFolder>,
        out: Option<&Path>,
        on_step: &mut dyn FnMut(StepStats),
        on_epoch: &mut dyn FnMut(&EpochStats),
    ) -> Result<()> {
        while self.epochs_done < self.cfg.epochs {
            let start = std::time::Instant::now();
            let train_loss = self.train_epoch(train, on_step)?;
            let seen = steps_per_epoch(train.len(), self.cfg.batch_size)
                * self.cfg.batch_size.min(train.len());
            let images_per_sec = seen as f64 / start.elapsed().as_secs_f64();
            let val = val.map(|v| self.evaluate(v)).transpose()?;
            let stats = EpochStats {
                epoch: self.epochs_done,
                train_loss,
                val,
                images_per_sec,
                lr: self.opt.lr(),
            };
            let best = self
                .history
                .iter()
                .filter_map(|e| e.val.map(|v| v.top1))
                .fold(f64::MIN, f64::max);
            self.history.push(stats);
            if let Some(dir) = out {
                self.save(dir)?;
                if val.is_some_and(|v| v.top1 > best) {
                    self.save_model(&dir.join("best"))?;
                }
            }
            on_epoch(&stats);
        }
        Ok(())
    }

    /// Loss, top-1 and top-5 of the model (evaluation mode, eval preprocessing) on `data`.
    pub fn evaluate(&self, data: &ImageFolder) -> Result<EvalStats> {
        evaluate(
            self.model.as_ref(),
            &self.spec.pretrained_cfg,
            data,
            self.cfg.batch_size.max(1) * 2,
            &self.device,
        )
    }

    /// Writes the model as a hub-style directory (`config.json`, `model.safetensors`) that
    /// [`tokenmix_models::load_model_dir`] and `tokenmix classify --model-dir` load.
    pub fn save_model(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let config = serde_json::to_string_pretty(&self.spec.config_json())?;
        write_atomic(&dir.join("config.json"), config.as_bytes())?;
        let tmp = dir.join("model.safetensors.tmp");
        self.varmap.save(&tmp)?;
        std::fs::rename(&tmp, dir.join("model.safetensors"))?;
        Ok(())
    }

    /// Writes a resumable checkpoint: the model ([`save_model`](Self::save_model)),
    /// `optimizer.safetensors` and `trainer.json`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_model(dir)?;
        let tmp = dir.join("optimizer.safetensors.tmp");
        candle_core::safetensors::save(&self.opt.state(), &tmp)?;
        std::fs::rename(&tmp, dir.join("optimizer.safetensors"))?;
        let state = TrainerState {
            spec: self.spec.clone(),
            config: self.cfg.clone(),
            epochs_done: self.epochs_done,
            steps_per_epoch: self.steps_per_epoch,
            optimizer_steps: self.opt.steps(),
            history: self.history.clone(),
        };
        write_atomic(
            &dir.join("trainer.json"),
            serde_json::to_string_pretty(&state)?.as_bytes(),
        )
    }

    /// Names of trainable parameters that get no gradient, or a non-finite one, from a step on
    /// `images` against `targets` (training mode); empty when every parameter learns.
    pub fn parameters_without_gradient(
        &self,
        images: &Tensor,
        targets: &Tensor,
    ) -> Result<Vec<String>> {
        let logits = self.model.forward_t(images, true)?;
        let grads = soft_cross_entropy(&logits, targets)?.backward()?;
        let mut missing = Vec::new();
        for (name, var) in trainable(&self.varmap) {
            let finite = match grads.get(var.as_tensor()) {
                Some(g) => g.abs()?.max_all()?.to_scalar::<f32>()?.is_finite(),
                None => false,
            };
            if !finite {
                missing.push(name);
            }
        }
        Ok(missing)
    }

    /// Sets the number of epochs of the run (for extending a resumed run).
    pub fn set_epochs(&mut self, epochs: usize) {
        self.cfg.epochs = epochs;
    }
}

/// Loss, top-1 and top-5 of `model` on `data`, in batches of `batch_size`.
pub fn evaluate(
    model: &dyn ImageModel,
    cfg: &PretrainedCfg,
    data: &ImageFolder,
    batch_size: usize,
    device: &Device,
) -> Result<EvalStats> {
    let (mut loss, mut top1, mut top5) = (0.0, 0usize, 0usize);
    for chunk in data.samples.chunks(batch_size.max(1)) {
        let batch = eval_batch(chunk, cfg)?;
        let logits = model.forward(&batch.tensor(device)?)?;
        let classes = logits.dim(1)?;
        let targets = soft_targets(&batch.labels, classes, 1.0, 0.0);
        let t = Tensor::from_vec(targets, (batch.labels.len(), classes), device)?;
        loss += soft_cross_entropy(&logits, &t)?.to_scalar::<f32>()? as f64 * chunk.len() as f64;
        for (row, &label) in logits.to_vec2::<f32>()?.iter().zip(&batch.labels) {
            let rank = label_rank(row, label);
            top1 += usize::from(rank == 0);
            top5 += usize::from(rank < 5);
        }
    }
    let n = data.len() as f64;
    Ok(EvalStats {
        loss: loss / n,
        top1: 100.0 * top1 as f64 / n,
        top5: 100.0 * top5 as f64 / n,
    })
}

/// Position of the true label among the logits (0: top-1); ties go against the label (a class
/// with an equal logit and a lower index ranks first) and a non-finite row ranks it last.
fn label_rank(row: &[f32], label: usize) -> usize {
    let x = row[label];
    if row.iter().any(|v| !v.is_finite()) {
        return row.len();
    }
    row.iter()
        .enumerate()
        .filter(|&(j, &v)| v > x || (v == x && j < label))
        .count()
}

/// SplitMix64's output function: decorrelates seeds derived from small counters.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn steps_per_epoch(len: usize, batch: usize) -> usize {
    (len / batch.max(1)).max(1)
}

fn adamw_config(cfg: &TrainConfig) -> AdamWConfig {
    AdamWConfig {
        lr: cfg.lr,
        weight_decay: cfg.weight_decay,
        ..Default::default()
    }
}

/// The architecture to train and its parameters, created (zero) under their checkpoint names.
fn build(spec: &ModelSpec, cfg: &TrainConfig, device: &Device) -> Result<(ArchConfig, VarMap)> {
    let mut arch = spec.arch()?;
    if let Some(rate) = cfg.drop_path {
        arch.set_drop_path_rate(rate);
    }
    let varmap = VarMap::new();
    model_from(&arch, &varmap, device)?;
    Ok((arch, varmap))
}

/// The model over the current values of `varmap`. Layers that pre-arrange weights when built
/// (split, transposed or folded copies) read the variables at this point, so the model is
/// rebuilt whenever the variables change.
fn model_from(arch: &ArchConfig, varmap: &VarMap, device: &Device) -> Result<Box<dyn ImageModel>> {
    Ok(arch.build(VarBuilder::from_varmap(varmap, DType::F32, device))?)
}

/// Names of the tensors whose shape depends on the class count: the classifier's.
fn classifier_tensors(arch: &ArchConfig) -> Result<Vec<String>> {
    let mut other = arch.clone();
    other.set_num_classes(arch.num_classes() + 1);
    let a = tokenmix_models::checkpoint::expected_tensors(arch)?;
    let b = tokenmix_models::checkpoint::expected_tensors(&other)?;
    Ok(a.into_iter()
        .filter(|(name, shape)| !b.iter().any(|(n, s)| n == name && s == shape))
        .map(|(name, _)| name)
        .collect())
}

fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().map(|d| d.clone()).unwrap_or_default();
    let mut vars: Vec<_> = data.into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

fn initialise(arch: &ArchConfig, varmap: &VarMap, seed: u64, device: &Device) -> Result<()> {
    let conv_init = arch.conv_init();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (name, var) in sorted_vars(varmap) {
        var.set(&init::initial_value(
            &name,
            var.dims(),
            conv_init,
            &mut rng,
            device,
        )?)?;
    }
    Ok(())
}

/// The variables of `varmap` an optimizer updates (all but the frozen buffers of
/// [`init::is_frozen`]), sorted by name.
pub(crate) fn trainable(varmap: &VarMap) -> Vec<(String, Var)> {
    sorted_vars(varmap)
        .into_iter()
        .filter(|(name, _)| !init::is_frozen(name))
        .collect()
}

/// The weights in `dir`, read with model loading's checks (no integer tensor, no NaN or
/// infinite value, each offender named).
fn read_weights(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let path = dir.join("model.safetensors");
    Ok(tokenmix_models::checkpoint::read_checked(
        &path,
        "the model being trained",
        device,
    )?)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
