//! Batch inference over many image files: finding the files ([`expand_inputs`]: directories,
//! globs, files), splitting them between processes ([`Shard`]), decoding the next batch on
//! rayon's threads while the model runs the current one ([`Prefetch`]), top-k predictions
//! ([`top_k`]) and timm-style validation of a labelled set ([`validate`], [`ClassMap`]).
//!
//! This is what `tokenmix classify` and `tokenmix validate` run; the image folders themselves
//! are read by [`crate::train::data::ImageFolder`] (feature `train`).
//!
//! ```no_run
//! use candle_core::Device;
//! use tokenmix::infer::{expand_inputs, top_k, Prefetch, Shard};
//! use tokenmix::models::load_model_dir;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::Cpu;
//! let model = load_model_dir("caformer_s18.sail_in1k".as_ref(), &device)?;
//! let files = expand_inputs(&["photos/", "scans/*.jpg"])?;
//! let mine = "0/4".parse::<Shard>()?.select(files); // this process's quarter
//! for batch in Prefetch::new(mine, &model.pretrained_cfg, 32) {
//!     for (path, err) in &batch.failed {
//!         eprintln!("skipped {}: {err}", path.display());
//!     }
//!     let Some(x) = batch.tensor(&device)? else { continue };
//!     let probs = candle_nn::ops::softmax_last_dim(&model.forward(&x)?)?.to_vec2::<f32>()?;
//!     for (path, p) in batch.items.iter().zip(&probs) {
//!         println!("{}: {:?}", path.display(), top_k(p, 5));
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::Serialize;
use tokenmix_models::preprocess::load_image;
use tokenmix_models::{Error, LoadedModel, PretrainedCfg, Result};

/// Files with these extensions (any case) are taken from directories.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// The image files named by `inputs`, sorted by path and without duplicates:
/// * a directory contributes every `.jpg`, `.jpeg` and `.png` file below it (recursively);
/// * a pattern with `*`, `?` or `[` is a glob (`scans/**/*.png`) and contributes every file it
///   matches, whatever its extension (quote it so that the shell leaves it alone: a shell
///   expanding a million names overflows the command line);
/// * anything else is a file, kept even if it does not exist, so that reading it fails and is
///   reported with the other unreadable files.
///
/// A directory that cannot be read and a glob that is malformed or matches nothing are errors.
pub fn expand_inputs<S: AsRef<str>>(inputs: &[S]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        let input = input.as_ref();
        let path = Path::new(input);
        if path.is_dir() {
            walk_images(path, &mut files)?;
        } else if input.contains(['*', '?', '[']) && !path.exists() {
            let before = files.len();
            let matches =
                glob::glob(input).map_err(|e| Error::config(format!("glob '{input}'"), e))?;
            for entry in matches {
                let p = entry.map_err(|e| Error::Io {
                    path: e.path().to_path_buf(),
                    source: std::io::Error::new(e.error().kind(), e.error().to_string()),
                })?;
                if p.is_file() {
                    files.push(p);
                }
            }
            if files.len() == before {
                return Err(Error::config(format!("glob '{input}'"), "matches no file"));
            }
        } else {
            files.push(path.to_path_buf());
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// Whether `path` has one of [`IMAGE_EXTENSIONS`].
fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

/// Pushes the image files below `dir` (following symbolic links to files and directories).
fn walk_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.is_dir() {
            walk_images(&path, out)?;
        } else if has_image_extension(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Part `index` of `count` of a file list: the items at positions `index`, `index + count`,
/// `index + 2 * count`, ... Given the same list (the same inputs on the same file system; a
/// list from [`expand_inputs`] is sorted), the `count` shards `0/count` .. `count-1/count`
/// cover every item exactly once, and their sizes differ by at most one.
///
/// Parses from `"i/N"` with `0 <= i < N`, as a job scheduler numbers its tasks
/// (`--shard $SLURM_PROCID/$SLURM_NTASKS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl Shard {
    /// The whole list as one shard.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` of `count`; an error unless `index < count`.
    pub fn new(index: usize, count: usize) -> Result<Self> {
        if index >= count {
            return Err(Error::config(
                "shard",
                format!("the index must be below the count (0-based), got {index}/{count}"),
            ));
        }
        Ok(Self { index, count })
    }

    /// Whether the item at `position` of the list is in this shard.
    pub fn contains(&self, position: usize) -> bool {
        position % self.count == self.index
    }

    /// This shard's items of `items`, in their order.
    pub fn select<T>(&self, items: Vec<T>) -> Vec<T> {
        items
            .into_iter()
            .enumerate()
            .filter(|(i, _)| self.contains(*i))
            .map(|(_, x)| x)
            .collect()
    }
}

impl FromStr for Shard {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::config(
                "shard",
                format!("'{s}' is not a shard such as 0/4 (index/count, 0-based)"),
            )
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let i = i.trim().parse().map_err(|_| bad())?;
        let n = n.trim().parse().map_err(|_| bad())?;
        Self::new(i, n)
    }
}

/// One batch from [`Prefetch`]: the images that decoded, as pixels in `items` order, and those
/// that did not, with why.
#[derive(Debug)]
pub struct DecodedBatch<T> {
    /// The items whose image decoded, in input order.
    pub items: Vec<T>,
    /// Their `(C, H, W)` pixels, concatenated: `(items.len(), C, H, W)` row-major.
    pub pixels: Vec<f32>,
    /// `(C, H, W)` of one image.
    pub image_shape: (usize, usize, usize),
    /// The items whose file could not be read or decoded, with the error (which names the
    /// file).
    pub failed: Vec<(T, Error)>,
}

impl<T> DecodedBatch<T> {
    /// The decoded images as a `(B, C, H, W)` tensor on `device`; `None` when none decoded.
    pub fn tensor(&self, device: &Device) -> Result<Option<Tensor>> {
        if self.items.is_empty() {
            return Ok(None);
        }
        let (c, h, w) = self.image_shape;
        Ok(Some(Tensor::from_slice(
            &self.pixels,
            (self.items.len(), c, h, w),
            device,
        )?))
    }
}

/// Something that names an image file: a path, or a `(path, label)` sample.
pub trait ImageItem: Send + Sync + 'static {
    /// The image file.
    fn path(&self) -> &Path;
}

impl ImageItem for PathBuf {
    fn path(&self) -> &Path {
        self
    }
}

impl<L: Send + Sync + 'static> ImageItem for (PathBuf, L) {
    fn path(&self) -> &Path {
        &self.0
    }
}

/// Batches of decoded, preprocessed images (timm's eval transform for a [`PretrainedCfg`]),
/// made by a background thread: each batch's files are decoded in parallel on rayon's threads,
/// and the next batch is decoded while the caller runs the model on the current one. At most
/// two batches are held at a time (the one handed out and the one being decoded), so memory
/// stays flat over any number of files. Dropping the iterator stops the decoding.
#[derive(Debug)]
pub struct Prefetch<T> {
    rx: Option<Receiver<DecodedBatch<T>>>,
    worker: Option<JoinHandle<()>>,
}

impl<T: ImageItem> Prefetch<T> {
    /// Starts decoding `items` in batches of `batch_size` (at least 1) for a model with `cfg`.
    pub fn new(items: Vec<T>, cfg: &PretrainedCfg, batch_size: usize) -> Self {
        let cfg = cfg.clone();
        let batch_size = batch_size.max(1);
        let (tx, rx) = sync_channel(1);
        let worker = std::thread::spawn(move || {
            let mut items = items.into_iter();
            loop {
                let chunk: Vec<T> = items.by_ref().take(batch_size).collect();
                if chunk.is_empty() || tx.send(decode_batch(chunk, &cfg)).is_err() {
                    return;
                }
            }
        });
        Self {
            rx: Some(rx),
            worker: Some(worker),
        }
    }
}

impl<T> Iterator for Prefetch<T> {
    type Item = DecodedBatch<T>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl<T> Drop for Prefetch<T> {
    fn drop(&mut self) {
        // Closing the channel first makes the worker's next send fail, so it stops.
        self.rx = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Decodes `chunk` in parallel and sorts it into decoded and failed items.
fn decode_batch<T: ImageItem>(chunk: Vec<T>, cfg: &PretrainedCfg) -> DecodedBatch<T> {
    let (h, w) = cfg.image_size();
    let c = cfg.input_size.first().copied().unwrap_or(3);
    let decoded: Vec<Result<Vec<f32>>> = chunk
        .par_iter()
        .map(|item| {
            let x = load_image(item.path(), cfg, &Device::Cpu)?;
            Ok(x.flatten_all()?.to_vec1::<f32>()?)
        })
        .collect();
    let mut batch = DecodedBatch {
        items: Vec::with_capacity(chunk.len()),
        pixels: Vec::with_capacity(chunk.len() * c * h * w),
        image_shape: (c, h, w),
        failed: Vec::new(),
    };
    for (item, result) in chunk.into_iter().zip(decoded) {
        match result {
            Ok(pixels) => {
                batch.pixels.extend_from_slice(&pixels);
                batch.items.push(item);
            }
            Err(e) => batch.failed.push((item, e)),
        }
    }
    batch
}

/// The indices of the `k` largest values of `scores`, largest first (ties: lower index first;
/// NaN last).
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| {
            if scores[i].is_nan() {
                f32::NEG_INFINITY
            } else {
                scores[i]
            }
        };
        key(b).total_cmp(&key(a)).then(a.cmp(&b))
    });
    order.truncate(k);
    order
}

/// Which model class each class folder holds.
///
/// timm's `--class-map` file is text with one folder name per line, line `i` (0-based) holding
/// the folder of class `i`; a `.json` file may instead hold an object `{"folder": index}`.
/// Without a map, a model whose `config.json` has `label_names` maps each folder to the label
/// of the same name, and other models take the folders in sorted order (torchvision's and
/// timm's `ImageFolder`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassMap {
    /// Folder name to class index.
    pub index: HashMap<String, usize>,
}

impl ClassMap {
    /// Reads a class-map file (see [`ClassMap`]).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let context = path.display().to_string();
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let index: HashMap<String, usize> = if is_json {
            serde_json::from_str(&text).map_err(|e| {
                Error::config(
                    &context,
                    format!("expected {{\"folder\": index, ...}}: {e}"),
                )
            })?
        } else {
            let mut index = HashMap::new();
            for (i, line) in text.lines().map(str::trim).enumerate() {
                if line.is_empty() {
                    continue;
                }
                if index.insert(line.to_string(), i).is_some() {
                    return Err(Error::config(
                        &context,
                        format!("folder '{line}' is listed twice"),
                    ));
                }
            }
            index
        };
        if index.is_empty() {
            return Err(Error::config(&context, "maps no folder"));
        }
        Ok(Self { index })
    }

    /// Folder `i` of `folders` holds class `i`.
    pub fn sorted(folders: &[String]) -> Self {
        Self {
            index: folders.iter().cloned().zip(0..).collect(),
        }
    }

    /// Each folder holds the class of the same name in `labels`.
    pub fn by_label(labels: &[String]) -> Self {
        Self::sorted(labels)
    }

    /// The map validation of `model` on `folders` uses when no file is given (see
    /// [`ClassMap`]); an error when a folder has no label of its name.
    pub fn for_model(model: &LoadedModel, folders: &[String]) -> Result<Self> {
        match &model.label_names {
            Some(labels) => {
                let map = Self::by_label(labels);
                if let Some(f) = folders.iter().find(|f| !map.index.contains_key(*f)) {
                    return Err(Error::config(
                        "class folders",
                        format!(
                            "folder '{f}' is not one of the model's label_names; give --class-map"
                        ),
                    ));
                }
                Ok(map)
            }
            None => Ok(Self::sorted(folders)),
        }
    }

    /// The class index of each of `folders`, checked against a model with `num_classes`.
    pub fn indices(&self, folders: &[String], num_classes: usize) -> Result<Vec<usize>> {
        folders
            .iter()
            .map(|f| match self.index.get(f) {
                Some(&i) if i < num_classes => Ok(i),
                Some(&i) => Err(Error::config(
                    "class map",
                    format!("folder '{f}' maps to class {i}, but the model has {num_classes}"),
                )),
                None => Err(Error::config(
                    "class map",
                    format!("the class map has no entry for folder '{f}'"),
                )),
            })
            .collect()
    }
}

/// Accuracy, loss and speed of a model on a labelled set, as timm's `validate.py` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ValidateStats {
    /// Images evaluated.
    pub images: usize,
    /// Top-1 accuracy, percent.
    pub top1: f64,
    /// Top-5 accuracy (top-k with k = the class count for fewer than 5 classes), percent.
    pub top5: f64,
    /// Mean cross-entropy of the logits against the labels.
    pub loss: f64,
    /// Wall time, decoding included, seconds.
    pub seconds: f64,
    /// Images per second over the whole run.
    pub images_per_sec: f64,
}

/// Position of the true label among the logits (0: top-1); ties go against the label (a class
/// with an equal logit and a lower index ranks first) and a non-finite row ranks it last.
pub fn label_rank(row: &[f32], label: usize) -> usize {
    let x = row[label];
    if row.iter().any(|v| !v.is_finite()) {
        return row.len();
    }
    row.iter()
        .enumerate()
        .filter(|&(j, &v)| v > x || (v == x && j < label))
        .count()
}

/// `-log softmax(row)[label]`, computed in f64.
fn cross_entropy(row: &[f32], label: usize) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + sum.ln() - row[label] as f64
}

/// Evaluates `model` on `samples` (image file, class index) with the eval preprocessing of
/// `cfg`, in batches of `batch_size` decoded in parallel ahead of the model ([`Prefetch`]).
/// `progress(done, total)` is called after each batch. An image that cannot be read fails the
/// run (accuracy over part of a set would mislead), naming the file.
pub fn validate(
    model: &LoadedModel,
    samples: Vec<(PathBuf, usize)>,
    cfg: &PretrainedCfg,
    batch_size: usize,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<ValidateStats> {
    let total = samples.len();
    if total == 0 {
        return Err(Error::Input("no images to validate".into()));
    }
    let classes = model.model.num_classes();
    if let Some((p, l)) = samples.iter().find(|(_, l)| *l >= classes) {
        return Err(Error::Input(format!(
            "{} has class {l}, but the model has {classes} classes",
            p.display()
        )));
    }
    let k = classes.min(5);
    let start = Instant::now();
    let (mut done, mut top1, mut top5, mut loss) = (0usize, 0usize, 0usize, 0f64);
    for mut batch in Prefetch::new(samples, cfg, batch_size) {
        if !batch.failed.is_empty() {
            return Err(batch.failed.swap_remove(0).1);
        }
        let Some(x) = batch.tensor(device)? else {
            continue;
        };
        let logits = model.forward(&x)?.to_vec2::<f32>()?;
        for (row, (_, label)) in logits.iter().zip(&batch.items) {
            let rank = label_rank(row, *label);
            top1 += usize::from(rank == 0);
            top5 += usize::from(rank < k);
            loss += cross_entropy(row, *label);
        }
        done += batch.items.len();
        progress(done, total);
    }
    let seconds = start.elapsed().as_secs_f64();
    let n = done as f64;
    Ok(ValidateStats {
        images: done,
        top1: 100.0 * top1 as f64 / n,
        top5: 100.0 * top5 as f64 / n,
        loss: loss / n,
        seconds,
        images_per_sec: n / seconds.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_a_list_exactly_and_evenly() {
        let items: Vec<usize> = (0..103).collect();
        let mut seen = Vec::new();
        for i in 0..7 {
            let part = Shard::new(i, 7).unwrap().select(items.clone());
            assert!(part.len() == 14 || part.len() == 15, "{}", part.len());
            seen.extend(part);
        }
        seen.sort();
        assert_eq!(seen, items);
        assert_eq!(
            "2/5".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 5 }
        );
        for bad in ["1", "a/2", "-1/3"] {
            let err = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(err.contains(&format!("'{bad}' is not a shard")), "{err}");
        }
        for bad in ["5/5", "1/0"] {
            let err = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(
                err.contains(&format!("below the count (0-based), got {bad}")),
                "{err}"
            );
        }
    }

    #[test]
    fn top_k_orders_by_score_then_index() {
        assert_eq!(top_k(&[0.1, 0.5, 0.5, f32::NAN, 0.2], 4), vec![1, 2, 4, 0]);
        assert_eq!(top_k(&[1.0], 5), vec![0]);
    }

    #[test]
    fn cross_entropy_matches_the_softmax() {
        let row = [1.0f32, 2.0, 3.0];
        let p = (2.0f64).exp() / (1f64.exp() + 2f64.exp() + 3f64.exp());
        assert!((cross_entropy(&row, 1) + p.ln()).abs() < 1e-12);
        assert_eq!(label_rank(&row, 2), 0);
        assert_eq!(label_rank(&[1.0, 1.0], 1), 1);
    }

    #[test]
    fn class_maps_read_text_and_json() {
        let dir = tempfile::tempdir().unwrap();
        let txt = dir.path().join("map.txt");
        std::fs::write(&txt, "n02\nn01\n\n").unwrap();
        let map = ClassMap::read(&txt).unwrap();
        let folders = ["n01".to_string(), "n02".to_string()];
        assert_eq!(map.indices(&folders, 10).unwrap(), vec![1, 0]);
        let err = map.indices(&folders, 1).unwrap_err().to_string();
        assert!(
            err.contains("folder 'n01' maps to class 1, but the model has 1"),
            "{err}"
        );
        let json = dir.path().join("map.json");
        std::fs::write(&json, r#"{"n01": 7, "n02": 3}"#).unwrap();
        assert_eq!(
            ClassMap::read(&json)
                .unwrap()
                .indices(&folders, 10)
                .unwrap(),
            vec![7, 3]
        );
        let err = ClassMap::sorted(&folders)
            .indices(&["n03".to_string()], 10)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no entry for folder 'n03'"), "{err}");
    }
}
