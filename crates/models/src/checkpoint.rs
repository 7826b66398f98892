//! Strict checkpoint loading and random weights.
//!
//! The tensors a model needs are found by building it once against a recording backend (no
//! memory is allocated for the weights); a checkpoint is then compared with that list before
//! anything is built, so every missing, unexpected, mis-shaped or wrongly typed tensor is
//! reported by name in one error.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use safetensors::SafeTensors;

use crate::{ArchConfig, Error, ImageModel, Result};

/// Name and shape of one tensor a model reads.
pub type TensorSpec = (String, Vec<usize>);

/// Largest model built: 8 G parameters (32 GB in f32). Configs beyond it are refused while
/// their tensor list is recorded, before anything is allocated.
pub const MAX_PARAMS: u64 = 8_000_000_000;

/// Most tensors a model may have.
pub const MAX_TENSORS: usize = 1_000_000;

/// What a recording build has seen so far.
#[derive(Default)]
struct Recording {
    specs: Vec<TensorSpec>,
    /// Parameters recorded so far.
    params: u64,
    /// Why recording stopped: the model is over [`MAX_PARAMS`] or [`MAX_TENSORS`].
    over: Option<String>,
}

/// A `VarBuilder` backend that records each tensor's name and shape and hands out a broadcast
/// zero scalar of that shape (no memory per element); it refuses, and stops the build, once the
/// model is over [`MAX_PARAMS`] parameters or [`MAX_TENSORS`] tensors.
struct Recorder {
    seen: Arc<Mutex<Recording>>,
}

impl Recording {
    fn record(&mut self, name: &str, dims: &[usize]) -> std::result::Result<(), String> {
        let elems = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let total = elems.and_then(|e| self.params.checked_add(e));
        if self.over.is_some() {
            return Err("the model is too large".into());
        }
        let over = match total {
            Some(n) if n <= MAX_PARAMS && self.specs.len() < MAX_TENSORS => None,
            Some(n) if n <= MAX_PARAMS => Some(format!(
                "the configuration describes a model of more than {MAX_TENSORS} tensors, the \
                 most tokenmix builds"
            )),
            Some(n) => Some(format!(
                "the configuration describes a model of more than {MAX_PARAMS} parameters, \
                 the most tokenmix builds (at least {n}, {:.1} GiB in f32, counted up to \
                 {name} {dims:?})",
                n as f64 * 4.0 / (1u64 << 30) as f64
            )),
            None => Some(format!(
                "the configuration describes a model of more than {MAX_PARAMS} parameters, \
                 the most tokenmix builds (more than 2^64, counted up to {name} {dims:?})"
            )),
        };
        if let Some(why) = over {
            self.over = Some(why.clone());
            return Err(why);
        }
        self.params = total.unwrap_or(u64::MAX);
        self.specs.push((name.to_string(), dims.to_vec()));
        Ok(())
    }
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| candle_core::Error::Msg("tensor recorder poisoned".into()))?;
        seen.record(name, s.dims())
            .map_err(candle_core::Error::Msg)?;
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("tensor {name} requested without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// The tensors `cfg` reads and their parameter count, recorded without allocating any of them;
/// a model over [`MAX_PARAMS`] or [`MAX_TENSORS`] is an error in `context`.
fn record(cfg: &ArchConfig, context: &str) -> Result<(Vec<TensorSpec>, u64)> {
    record_build(|vb| cfg.build(vb).map(drop), context)
}

/// The tensors `build` reads from the `VarBuilder` it is given and their parameter count,
/// recorded without allocating any of them; a model over [`MAX_PARAMS`] or [`MAX_TENSORS`] is
/// an error in `context`.
pub(crate) fn record_build(
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
    context: &str,
) -> Result<(Vec<TensorSpec>, u64)> {
    let seen = Arc::new(Mutex::new(Recording::default()));
    let recorder = Recorder { seen: seen.clone() };
    let vb = VarBuilder::from_backend(Box::new(recorder), DType::F32, Device::Cpu);
    let built = build(vb);
    let recording = std::mem::take(
        &mut *seen
            .lock()
            .map_err(|_| Error::config(context, "tensor recorder poisoned"))?,
    );
    if let Some(why) = recording.over {
        return Err(Error::config(context, why));
    }
    built?;
    Ok((recording.specs, recording.params))
}

/// Every tensor `cfg` reads, with its shape, in build order; recorded without allocating the
/// tensors or anything derived from them, and refused over [`MAX_PARAMS`] parameters.
pub fn expected_tensors(cfg: &ArchConfig) -> Result<Vec<TensorSpec>> {
    Ok(record(cfg, &format!("a {} model", cfg.family()))?.0)
}

/// Number of parameters of `cfg`: every tensor in its checkpoint but batch-norm running
/// statistics (frozen matrices such as RandFormer's count, as PyTorch counts them).
pub fn param_count(cfg: &ArchConfig) -> Result<u64> {
    Ok(count_params(&expected_tensors(cfg)?))
}

/// Elements of `specs` but batch-norm running statistics: the parameter count PyTorch reports.
pub(crate) fn count_params(specs: &[TensorSpec]) -> u64 {
    specs
        .iter()
        .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
        .map(|(_, s)| s.iter().map(|&d| d as u64).product::<u64>())
        .sum()
}

/// The tensors of `cfg`, refusing models over [`MAX_PARAMS`] (in messages about `model_name`).
fn checked_tensors(cfg: &ArchConfig, model_name: &str) -> Result<Vec<TensorSpec>> {
    Ok(record(cfg, model_name)?.0)
}

/// Whether every value of a little-endian float buffer is finite (checked on the bit patterns).
fn all_finite(dtype: safetensors::Dtype, data: &[u8]) -> bool {
    use safetensors::Dtype as D;
    match dtype {
        D::F32 => data
            .chunks_exact(4)
            .all(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 != 0x7f80_0000),
        D::F16 => data
            .chunks_exact(2)
            .all(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 != 0x7c00),
        D::BF16 => data
            .chunks_exact(2)
            .all(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 != 0x7f80),
        D::F64 => data.chunks_exact(8).all(|b| {
            let bits = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            bits & 0x7ff0_0000_0000_0000 != 0x7ff0_0000_0000_0000
        }),
        _ => true,
    }
}

const MAX_LISTED: usize = 8;

fn list(kind: &str, items: &[String]) -> Option<String> {
    if items.is_empty() {
        return None;
    }
    let mut shown = items[..items.len().min(MAX_LISTED)].join(", ");
    if items.len() > MAX_LISTED {
        shown.push_str(&format!(" and {} more", items.len() - MAX_LISTED));
    }
    Some(format!("{} {kind}: {shown}", items.len()))
}

/// Adds `name` to `bad_dtype` unless `view` holds floats, else to `non_finite` if it has a NaN
/// or infinite value.
fn check_values(
    name: &str,
    view: &safetensors::tensor::TensorView,
    bad_dtype: &mut Vec<String>,
    non_finite: &mut Vec<String>,
) {
    use safetensors::Dtype as D;
    if !matches!(view.dtype(), D::F32 | D::F16 | D::BF16 | D::F64) {
        bad_dtype.push(format!(
            "{name} ({:?}; want f32, f16 or bf16)",
            view.dtype()
        ));
    } else if !all_finite(view.dtype(), view.data()) {
        non_finite.push(name.to_string());
    }
}

/// Reads every tensor of the checkpoint at `path` (safetensors or `torch.save`) onto `device` as
/// f32, with the checks
/// model loading applies to each tensor: a tensor of an integer or boolean dtype, or with NaN or
/// infinite values, is refused (all of them named in one [`Error::WeightMismatch`] about
/// `model_name`). Which tensors the file must hold is the caller's to check; training uses this
/// for fine-tuning and resuming.
pub fn read_checked(
    path: &Path,
    model_name: &str,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let bytes = CheckpointBytes::open(path)?;
    let st = SafeTensors::deserialize(bytes.as_slice()).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let (mut bad_dtype, mut non_finite) = (Vec::new(), Vec::new());
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    for name in &names {
        let view = st.tensor(name).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        check_values(name, &view, &mut bad_dtype, &mut non_finite);
    }
    let problems: Vec<String> = [
        list("tensors of an unsupported dtype", &bad_dtype),
        list("tensors with NaN or infinite values", &non_finite),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !problems.is_empty() {
        return Err(Error::WeightMismatch {
            path: path.to_path_buf(),
            model: model_name.to_string(),
            details: problems.join("; "),
        });
    }
    let mut tensors = HashMap::with_capacity(names.len());
    for name in names {
        let view = st.tensor(name).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        let t = candle_core::safetensors::Load::load(&view, device)?.to_dtype(DType::F32)?;
        tensors.insert(name.to_string(), t);
    }
    Ok(tensors)
}

/// The stored name of every tensor a checkpoint holds, keyed by the model's name for it
/// ([`Architecture::checkpoint_names`](crate::Architecture::checkpoint_names)); a second stored
/// tensor for the same model name is returned apart, as unexpected.
fn stored_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
    rules: &Rules,
) -> (HashMap<String, &'a str>, Vec<String>) {
    let mut names: Vec<&str> = names.into_iter().collect();
    names.sort_unstable();
    let model_names = (rules.rename)(&names);
    let (mut by_model, mut duplicates) = (HashMap::with_capacity(names.len()), Vec::new());
    for (name, model_name) in names.into_iter().zip(model_names) {
        match by_model.entry(model_name) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(name);
            }
            std::collections::hash_map::Entry::Occupied(e) => {
                duplicates.push(format!("{name} (a second {})", e.key()))
            }
        }
    }
    (by_model, duplicates)
}

/// Whether tensor `name` stored with shape `found` can be adapted to `expected`.
pub(crate) type CanResize<'a> = &'a dyn Fn(&str, &[usize], &[usize]) -> bool;

/// How a model family reads a checkpoint: its stored names mapped to the model's, the
/// mis-shaped tensors it can adapt, and the stored tensors it has no use for (batch-norm step
/// counters always, which carry no weights).
pub(crate) struct Rules<'a> {
    /// The model's names for a checkpoint's stored names, in their order.
    pub rename: &'a dyn Fn(&[&str]) -> Vec<String>,
    /// Whether a mis-shaped tensor can be adapted.
    pub can_resize: CanResize<'a>,
    /// Whether a stored tensor (by the model's name for it) is skipped without complaint.
    pub ignore: &'a dyn Fn(&str) -> bool,
}

/// Compares the tensors of a safetensors file with what the model needs (stored names mapped
/// to the model's by [`stored_names`]); returns that mapping.
fn check_tensors<'a>(
    st: &'a SafeTensors,
    expected: &[TensorSpec],
    cfg: &ArchConfig,
) -> std::result::Result<HashMap<String, &'a str>, String> {
    let rules = Rules {
        rename: &|names| cfg.checkpoint_names(names),
        can_resize: &|name, found, expected| cfg.can_resize(name, found, expected),
        ignore: &|_| false,
    };
    check_with(st, expected, &rules, &|_| {})
}

/// [`check_tensors`] under a family's [`Rules`]; `checked` is handed each tensor's bytes once
/// its values are checked (a mapped file gives their pages back there, so the checks never
/// hold the whole file in memory).
pub(crate) fn check_with<'a>(
    st: &'a SafeTensors,
    expected: &[TensorSpec],
    rules: &Rules,
    checked: &dyn Fn(&[u8]),
) -> std::result::Result<HashMap<String, &'a str>, String> {
    let wanted: HashMap<&str, &Vec<usize>> =
        expected.iter().map(|(n, s)| (n.as_str(), s)).collect();
    let (stored, duplicates) = stored_names(st.names(), rules);
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    let mut bad_dtype = Vec::new();
    let mut non_finite = Vec::new();
    for (name, shape) in expected {
        match stored.get(name).map(|s| st.tensor(s)) {
            None | Some(Err(_)) => missing.push(name.clone()),
            Some(Ok(view)) => {
                if view.shape() != shape.as_slice()
                    && !(rules.can_resize)(name, view.shape(), shape)
                {
                    misshaped.push(format!(
                        "{name} (expected {shape:?}, found {:?})",
                        view.shape()
                    ));
                }
                check_values(name, &view, &mut bad_dtype, &mut non_finite);
                checked(view.data());
            }
        }
    }
    // Batch-norm step counters carry no weights; checkpoints of BN models have them.
    let mut unexpected: Vec<String> = stored
        .iter()
        .filter(|(n, _)| {
            !wanted.contains_key(n.as_str())
                && !n.ends_with("num_batches_tracked")
                && !(rules.ignore)(n)
        })
        .map(|(_, s)| s.to_string())
        .chain(duplicates)
        .collect();
    missing.sort();
    unexpected.sort();
    let problems: Vec<String> = [
        list("missing tensors", &missing),
        list("unexpected tensors", &unexpected),
        list("tensors of the wrong shape", &misshaped),
        list("tensors of an unsupported dtype", &bad_dtype),
        list("tensors with NaN or infinite values", &non_finite),
    ]
    .into_iter()
    .flatten()
    .collect();
    if problems.is_empty() {
        Ok(stored)
    } else {
        Err(problems.join("; "))
    }
}

/// A checkpoint's bytes: a safetensors file memory-mapped, or a `torch.save` archive converted
/// to safetensors in memory. Loading from a mapping copies each tensor once, into the tensor it
/// becomes, and hands the file's pages back as it goes ([`CheckpointBytes::release`]), so that
/// the whole file is never read into memory beside the model (a `torch.save` archive is: it is
/// converted in memory first). The file must not be changed
/// while it is being loaded (as for any memory-mapped file).
pub(crate) enum CheckpointBytes<'a> {
    /// A memory-mapped file.
    Mapped(memmap2::Mmap),
    /// Bytes in memory.
    Owned(Vec<u8>),
    /// The caller's bytes.
    Borrowed(&'a [u8]),
}

impl<'a> CheckpointBytes<'a> {
    /// The checkpoint at `path`: mapped, or converted when it is a `torch.save` archive (told
    /// apart by its first bytes).
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is read only; the file's contents are read through it while it
        // is loaded, as `std::fs::read` would read them (a file truncated meanwhile is the
        // caller's error, as for every memory-mapped reader).
        let map = match unsafe { memmap2::Mmap::map(&file) } {
            Ok(map) => map,
            Err(_) => return Self::from_vec(std::fs::read(path).map_err(io)?, path),
        };
        Ok(match converted(&map, path)? {
            Some(st) => Self::Owned(st),
            None => Self::Mapped(map),
        })
    }

    /// Bytes read into memory (a `torch.save` archive is converted).
    pub(crate) fn from_vec(bytes: Vec<u8>, path: &Path) -> Result<Self> {
        Ok(Self::Owned(converted(&bytes, path)?.unwrap_or(bytes)))
    }

    /// The caller's bytes, not copied (a `torch.save` archive is converted).
    pub(crate) fn from_slice(bytes: &'a [u8], path: &Path) -> Result<Self> {
        Ok(match converted(bytes, path)? {
            Some(st) => Self::Owned(st),
            None => Self::Borrowed(bytes),
        })
    }

    /// The safetensors bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Owned(v) => v,
            Self::Borrowed(b) => b,
        }
    }

    /// Tells the kernel that the pages holding `part` (a sub-slice of [`as_slice`]) are not
    /// needed now: they leave this process's resident memory and are read from the file again
    /// if touched. The mapping is read only, so nothing is lost. Bytes in memory are kept.
    ///
    /// [`as_slice`]: Self::as_slice
    pub(crate) fn release(&self, part: &[u8]) {
        #[cfg(unix)]
        if let Self::Mapped(map) = self {
            let (base, len) = (map.as_ptr() as usize, map.len());
            let (start, end) = (part.as_ptr() as usize, part.as_ptr() as usize + part.len());
            if part.is_empty() || start < base || end > base + len {
                return;
            }
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
            let first = base + (start - base) / page * page;
            let last = (end - base).div_ceil(page) * page;
            let stop = (base + last).min(base + len.div_ceil(page) * page);
            // SAFETY: [first, stop) lies within the mapping's pages (its start is page
            // aligned); MADV_DONTNEED on a read-only private file mapping only drops pages,
            // which the next access reads from the file again.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    stop - first,
                    libc::MADV_DONTNEED,
                );
            }
        }
        #[cfg(not(unix))]
        let _ = part;
    }
}

/// The safetensors bytes of a `torch.save` archive (its top-level state dict), or `None` when
/// `bytes` are not one.
fn converted(bytes: &[u8], path: &Path) -> Result<Option<Vec<u8>>> {
    is_pth(bytes)
        .then(|| pth_as_safetensors(bytes, path, None))
        .transpose()
}

/// Loads a model of architecture `cfg` (called `model_name` in messages) from the checkpoint at
/// `path` onto `device`, in f32: a safetensors file, or a PyTorch `torch.save` file (told apart
/// by their first bytes, not their names; see [`load_pth`]). f32, f16 and bf16 weights are
/// accepted; the file must hold exactly the tensors the model needs, with the right shapes.
pub fn load_safetensors(
    path: &Path,
    cfg: &ArchConfig,
    model_name: &str,
    device: &Device,
) -> Result<Box<dyn ImageModel>> {
    Ok(load_file_as(path, cfg, model_name, device, DType::F32)?.0)
}

/// [`load_safetensors`] computing in `dtype` (f32, bf16 or f16, see [`check_dtype`]): every
/// weight is converted once at load from its stored dtype (kept as it is where it is stored in
/// `dtype`). Also returns how many tensors the checkpoint stored in each dtype.
pub fn load_file_as(
    path: &Path,
    cfg: &ArchConfig,
    model_name: &str,
    device: &Device,
    dtype: DType,
) -> Result<(Box<dyn ImageModel>, StoredDTypes)> {
    check_dtype(dtype, device)?;
    // The tensor list is checked (and absurd configs refused) before the file is read.
    let expected = checked_tensors(cfg, model_name)?;
    let bytes = CheckpointBytes::open(path)?;
    load_expected(&bytes, path, &expected, cfg, model_name, device, dtype)
}

/// How many of a checkpoint's tensors were stored in each dtype, in the order first met.
pub type StoredDTypes = Vec<(DType, usize)>;

/// Refuses a compute dtype tokenmix does not run models in: f32, bf16 and f16 run on the CPU
/// and on CUDA devices; anything else is an [`Error::Config`] naming the dtype and the device.
pub fn check_dtype(dtype: DType, device: &Device) -> Result<()> {
    let device_ok = matches!(device, Device::Cpu | Device::Cuda(_));
    if matches!(dtype, DType::F32 | DType::BF16 | DType::F16) && device_ok {
        return Ok(());
    }
    Err(Error::config(
        "dtype",
        format!(
            "models run in f32, bf16 or f16 on the CPU or a CUDA device, not in {} on {}",
            dtype.as_str(),
            device_name(device)
        ),
    ))
}

/// A device as messages name it.
fn device_name(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "the CPU",
        Device::Cuda(_) => "a CUDA device",
        Device::Metal(_) => "a Metal device",
    }
}

/// Whether `bytes` start as a zip archive (`torch.save`'s format) does.
pub fn is_pth(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// The state dict of a `torch.save` checkpoint as safetensors bytes (stored dtypes kept).
fn pth_as_safetensors(bytes: &[u8], path: &Path, key: Option<&str>) -> Result<Vec<u8>> {
    let tensors = crate::pth::read_state_dict(bytes, path, key)?;
    crate::pth::to_safetensors(&tensors)
}

/// Loads a model of architecture `cfg` from the PyTorch checkpoint at `path` (`torch.save`'s
/// zip format, as the reference repositories publish `.pth` files), with the strictness of
/// [`load_safetensors`]. The state dict is the file's top-level dict, or the one under `key`,
/// else under the first of [`crate::pth::STATE_DICT_KEYS`] present; a `module.` prefix on every
/// name is removed. Nothing in the file is executed.
pub fn load_pth(
    path: &Path,
    cfg: &ArchConfig,
    model_name: &str,
    key: Option<&str>,
    device: &Device,
) -> Result<Box<dyn ImageModel>> {
    let expected = checked_tensors(cfg, model_name)?;
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let st = CheckpointBytes::Owned(pth_as_safetensors(&bytes, path, key)?);
    drop(bytes);
    Ok(load_expected(&st, path, &expected, cfg, model_name, device, DType::F32)?.0)
}

/// The safetensors file of exactly the tensors `cfg` needs, taken from the PyTorch checkpoint
/// `bytes` (named `path` in errors; state dict chosen as by [`load_pth`]) after the checks
/// loading applies, each in its stored dtype: what `tokenmix convert` writes.
pub fn convert_pth(
    bytes: &[u8],
    path: &Path,
    cfg: &ArchConfig,
    model_name: &str,
    key: Option<&str>,
) -> Result<Vec<u8>> {
    let expected = checked_tensors(cfg, model_name)?;
    let tensors = crate::pth::read_state_dict(bytes, path, key)?;
    let st_bytes = crate::pth::to_safetensors(&tensors)?;
    let st = SafeTensors::deserialize(&st_bytes).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let stored = check_tensors(&st, &expected, cfg).map_err(|details| Error::WeightMismatch {
        path: path.to_path_buf(),
        model: model_name.to_string(),
        details,
    })?;
    let mut by_stored: HashMap<String, crate::pth::PthTensor> = tensors.into_iter().collect();
    let kept: Vec<(String, crate::pth::PthTensor)> = expected
        .iter()
        .filter_map(|(name, _)| {
            let t = by_stored.remove(*stored.get(name)?)?;
            Some((name.clone(), t))
        })
        .collect();
    crate::pth::to_safetensors(&kept)
}

/// [`load_safetensors`] on the bytes of a checkpoint (safetensors or `torch.save`); `path` only
/// names it in errors. Weights with NaN or infinite values are refused.
pub fn load_safetensors_bytes(
    bytes: &[u8],
    path: &Path,
    cfg: &ArchConfig,
    model_name: &str,
    device: &Device,
) -> Result<Box<dyn ImageModel>> {
    Ok(load_bytes_as(bytes, path, cfg, model_name, device, DType::F32)?.0)
}

/// [`load_safetensors_bytes`] computing in `dtype`, as [`load_file_as`].
pub fn load_bytes_as(
    bytes: &[u8],
    path: &Path,
    cfg: &ArchConfig,
    model_name: &str,
    device: &Device,
    dtype: DType,
) -> Result<(Box<dyn ImageModel>, StoredDTypes)> {
    check_dtype(dtype, device)?;
    let expected = checked_tensors(cfg, model_name)?;
    let st = CheckpointBytes::from_slice(bytes, path)?;
    load_expected(&st, path, &expected, cfg, model_name, device, dtype)
}

/// Loads the `expected` tensors of `cfg` from safetensors `bytes` as `dtype` and builds the
/// model; also returns the checkpoint's stored dtypes.
fn load_expected(
    bytes: &CheckpointBytes<'_>,
    path: &Path,
    expected: &[TensorSpec],
    cfg: &ArchConfig,
    model_name: &str,
    device: &Device,
    dtype: DType,
) -> Result<(Box<dyn ImageModel>, StoredDTypes)> {
    let rules = Rules {
        rename: &|names| cfg.checkpoint_names(names),
        can_resize: &|name, found, expected| cfg.can_resize(name, found, expected),
        ignore: &|_| false,
    };
    let checked = load_checked(bytes, path, expected, &rules, model_name, device, dtype)?;
    let mut tensors = checked.tensors;
    for (name, shape) in expected {
        if let Some(t) = tensors.get_mut(name) {
            if t.dims() != shape.as_slice() {
                // Resizing (position embeddings, filters) interpolates in f32.
                let resized = cfg.resize_tensor(name, &t.to_dtype(DType::F32)?, shape)?;
                *t = resized.to_dtype(dtype)?;
            }
        }
    }
    let vb = VarBuilder::from_tensors(tensors, dtype, device);
    Ok((cfg.build(vb)?, checked.stored))
}

/// What [`load_checked`] read: the tensors under the model's names, and how many the
/// checkpoint stored in each dtype.
pub(crate) struct Checked {
    pub(crate) tensors: HashMap<String, Tensor>,
    pub(crate) stored: StoredDTypes,
}

/// The `expected` tensors from safetensors `bytes` (named `path` in errors) as `dtype` on `device`,
/// under the model's names, after every check of [`check_with`] (all problems named in one
/// [`Error::WeightMismatch`] about `model_name`); tensors [`Rules::can_resize`] accepted keep
/// their stored shape. Each tensor is copied once, and a mapped file's pages are released
/// after the checks and after each copy.
pub(crate) fn load_checked(
    bytes: &CheckpointBytes<'_>,
    path: &Path,
    expected: &[TensorSpec],
    rules: &Rules,
    model_name: &str,
    device: &Device,
    dtype: DType,
) -> Result<Checked> {
    let st = SafeTensors::deserialize(bytes.as_slice()).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let stored =
        check_with(&st, expected, rules, &|data| bytes.release(data)).map_err(|details| {
            Error::WeightMismatch {
                path: path.to_path_buf(),
                model: model_name.to_string(),
                details,
            }
        })?;
    bytes.release(bytes.as_slice());
    let mut tensors = HashMap::with_capacity(expected.len());
    let mut counts: StoredDTypes = Vec::new();
    for (name, _) in expected {
        let stored_name = stored.get(name).copied().unwrap_or(name);
        let view = st.tensor(stored_name).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        let (t, stored_dtype) = match narrowed_from_f32(&view, dtype, device)? {
            Some(t) => (t, DType::F32),
            None => {
                let t = candle_core::safetensors::Load::load(&view, device)?;
                let stored = t.dtype();
                (t.to_dtype(dtype)?, stored)
            }
        };
        match counts.iter_mut().find(|(d, _)| *d == stored_dtype) {
            Some((_, n)) => *n += 1,
            None => counts.push((stored_dtype, 1)),
        }
        bytes.release(view.data());
        tensors.insert(name.clone(), t);
    }
    Ok(Checked {
        tensors,
        stored: counts,
    })
}

/// A stored f32 tensor converted straight from the checkpoint's bytes to a half-precision
/// `dtype` on the CPU (no f32 copy in between, so loading in bf16 never holds an f32 weight),
/// or `None` where that does not apply (another dtype pair or device, or bytes not aligned for
/// f32).
fn narrowed_from_f32(
    view: &safetensors::tensor::TensorView,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    let applies = view.dtype() == safetensors::Dtype::F32
        && matches!(dtype, DType::BF16 | DType::F16)
        && device.is_cpu();
    let data = view.data();
    if !applies || data.as_ptr().align_offset(std::mem::align_of::<f32>()) != 0 {
        return Ok(None);
    }
    // SAFETY: `data` is 4-byte aligned (checked above), its length is a multiple of 4 (the
    // checks sized it as the shape's f32 count), and every bit pattern is an f32.
    let values: &[f32] =
        unsafe { std::slice::from_raw_parts(data.as_ptr().cast(), data.len() / 4) };
    Ok(Some(tokenmix_kernels::narrow_f32(
        values,
        view.shape(),
        dtype,
    )?))
}

/// Random weights for the tensors `specs` (normal, std 0.02; norm weights and scales near
/// one), for benchmarks and tests.
pub(crate) fn random_tensors(
    specs: Vec<TensorSpec>,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    for (name, shape) in specs {
        let noise = Tensor::randn(0f32, 0.02, shape.as_slice(), device)?;
        let is_gain =
            name.ends_with("scale") || (name.contains("norm") && name.ends_with("weight"));
        let t = if is_gain { (noise + 1.0)? } else { noise };
        tensors.insert(name, t);
    }
    Ok(tensors)
}

/// Builds `cfg` with random weights (normal, std 0.02; norm weights and scales near one), for
/// benchmarks and tests.
pub fn random_model(cfg: &ArchConfig, device: &Device) -> Result<Box<dyn ImageModel>> {
    random_model_as(cfg, device, DType::F32)
}

/// [`random_model`] computing in `dtype` (f32, bf16 or f16; the weights drawn in f32, then
/// converted).
pub fn random_model_as(
    cfg: &ArchConfig,
    device: &Device,
    dtype: DType,
) -> Result<Box<dyn ImageModel>> {
    check_dtype(dtype, device)?;
    let mut tensors = random_tensors(checked_tensors(cfg, "random model")?, device)?;
    for t in tensors.values_mut() {
        *t = t.to_dtype(dtype)?;
    }
    Ok(cfg.build(VarBuilder::from_tensors(tensors, dtype, device))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages handed back from a mapped checkpoint read again as the file's bytes, and a
    /// sub-slice that does not start on a page boundary is handled.
    #[test]
    fn released_pages_of_a_mapped_checkpoint_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let values: Vec<f32> = (0..100_000).map(|i| i as f32 * 0.5).collect();
        let t = Tensor::from_vec(values.clone(), (250, 400), &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), t)]), &path).unwrap();
        let bytes = CheckpointBytes::open(&path).unwrap();
        assert!(matches!(bytes, CheckpointBytes::Mapped(_)));
        let before = bytes.as_slice().to_vec();
        bytes.release(&bytes.as_slice()[13..70_001]);
        assert_eq!(bytes.as_slice(), before.as_slice());
        bytes.release(bytes.as_slice());
        assert_eq!(bytes.as_slice(), before.as_slice());
        let rules = Rules {
            rename: &|names| names.iter().map(|n| n.to_string()).collect(),
            can_resize: &|_, _, _| false,
            ignore: &|_| false,
        };
        let expected = vec![("w".to_string(), vec![250, 400])];
        let loaded = load_checked(
            &bytes,
            &path,
            &expected,
            &rules,
            "m",
            &Device::Cpu,
            DType::F32,
        )
        .unwrap()
        .tensors;
        let back: Vec<f32> = loaded["w"].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(back, values);
    }
}
