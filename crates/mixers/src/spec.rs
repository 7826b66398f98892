//! Mixer configurations chosen at run time: the [`MixerSpec`] trait a mixer's config implements,
//! the type-erased [`MixerConfig`] that backbones hold, and the registry that turns
//! `{"type": "pooling", "pool_size": 3}` into one.
//!
//! A mixer family lives in one file: its config struct (serde, `Default` = the paper's
//! setting) implements [`MixerSpec`], and one line of `crate::registry!` in lib.rs registers it
//! under [`MixerSpec::kind`]. Mixers defined outside this crate enter a backbone the same way,
//! through [`MixerConfig::new`], and become readable from JSON with [`register_mixer`].

use std::any::Any;
use std::fmt;
use std::sync::{Arc, RwLock};

use candle_core::Result;
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::{MixerError, TokenMixer};

/// What a backbone needs to know about a mixer family before building it: its name, its
/// hyper-parameter checks, its cost, and how to build it for a stage of `dim` channels.
///
/// The built mixer's [`TokenMixer::forward`] returns only the mixing term, in the layout it
/// declares: the block around it owns the norm, residual, layer/res scales and drop path.
pub trait MixerSpec: fmt::Debug + Send + Sync + 'static {
    /// The registered name, also the `"type"` tag of the JSON form (`"pooling"`, ...).
    fn kind(&self) -> &'static str;
    /// Checks the hyper-parameters for `dim` channels; the error says which one is wrong
    /// (a [`MixerError::Config`] is the usual choice).
    fn validate(&self, _dim: usize) -> Result<()> {
        Ok(())
    }
    /// Builds the mixer for `dim` channels, reading its weights from `vb` (the block's
    /// `token_mixer` prefix in timm's names). Called after [`validate`](Self::validate).
    fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>>;
    /// Multiply-accumulates of one forward pass for one sample with `dim` channels on an
    /// `h x w` token grid (convolutions and products; element-wise work is not counted).
    fn macs(&self, dim: usize, h: usize, w: usize) -> u64;
    /// The config for a stage whose map is `h x w`, for mixers whose weights are tied to the
    /// token grid (RandFormer's matrix, token MLPs, global filters); `None` when the mixer
    /// takes any grid.
    fn for_grid(&self, _h: usize, _w: usize) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
}

/// The object-safe face of a `MixerSpec + Serialize + Clone + PartialEq`.
trait ErasedSpec: fmt::Debug + Send + Sync {
    fn spec(&self) -> &dyn MixerSpec;
    fn to_json(&self) -> serde_json::Result<Value>;
    fn for_grid(&self, h: usize, w: usize) -> Option<MixerConfig>;
    fn as_any(&self) -> &dyn Any;
    fn same(&self, other: &dyn Any) -> bool;
}

impl<T: MixerSpec + Serialize + Clone + PartialEq> ErasedSpec for T {
    fn spec(&self) -> &dyn MixerSpec {
        self
    }

    fn to_json(&self) -> serde_json::Result<Value> {
        serde_json::to_value(self)
    }

    fn for_grid(&self, h: usize, w: usize) -> Option<MixerConfig> {
        MixerSpec::for_grid(self, h, w).map(MixerConfig::new)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn same(&self, other: &dyn Any) -> bool {
        other.downcast_ref::<T>() == Some(self)
    }
}

/// A token mixer's family and hyper-parameters, chosen at run time: any [`MixerSpec`], built-in
/// or user-defined. Cheap to clone. Its JSON form is the spec's fields plus `"type"`:
/// `{"type": "sepconv", "expansion_ratio": 2.0, "kernel_size": 7, "bias": false}`.
///
/// The channel count is not part of the config; the stage that owns the mixer passes it to
/// [`MixerConfig::build`].
#[derive(Clone)]
pub struct MixerConfig(Arc<dyn ErasedSpec>);

impl MixerConfig {
    /// Wraps a mixer spec, e.g. `MixerConfig::new(PoolingConfig { pool_size: 3 })` or a spec
    /// written outside this crate.
    pub fn new<T: MixerSpec + Serialize + Clone + PartialEq>(spec: T) -> Self {
        Self(Arc::new(spec))
    }

    /// The wrapped spec.
    pub fn spec(&self) -> &dyn MixerSpec {
        self.0.spec()
    }

    /// The registered name of the mixer family.
    pub fn kind(&self) -> &'static str {
        self.spec().kind()
    }

    /// Checks the hyper-parameters for `dim` channels.
    pub fn validate(&self, dim: usize) -> Result<()> {
        self.spec().validate(dim)
    }

    /// Validates, then builds the mixer for `dim` channels from `vb`.
    pub fn build(&self, dim: usize, vb: VarBuilder) -> Result<Box<dyn TokenMixer>> {
        self.validate(dim)?;
        self.spec().build(dim, vb)
    }

    /// Multiply-accumulates of one forward pass, see [`MixerSpec::macs`].
    pub fn macs(&self, dim: usize, h: usize, w: usize) -> u64 {
        self.spec().macs(dim, h, w)
    }

    /// This config fitted to an `h x w` stage (see [`MixerSpec::for_grid`]); unchanged for
    /// mixers that take any grid.
    pub fn for_grid(&self, h: usize, w: usize) -> Self {
        self.0.for_grid(h, w).unwrap_or_else(|| self.clone())
    }

    /// The concrete spec, if it is a `T`.
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }

    /// The JSON form, `"type"` included.
    pub fn to_json(&self) -> Value {
        let fields = match self.0.to_json() {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let mut out = Map::new();
        out.insert("type".into(), Value::String(self.kind().into()));
        out.extend(fields);
        Value::Object(out)
    }

    /// Reads the JSON form: `"type"` names a registered mixer (see [`registered_mixers`]), the
    /// other keys are its config's fields; unknown types and fields are errors that list what
    /// is accepted.
    pub fn from_json(value: &Value) -> std::result::Result<Self, MixerError> {
        let bad = |msg: String| MixerError::Config {
            mixer: "mixer config",
            msg,
        };
        let Value::Object(map) = value else {
            return Err(bad(format!(
                "expected an object with a \"type\", got {value}"
            )));
        };
        let Some(kind) = map.get("type").and_then(Value::as_str) else {
            return Err(bad(format!("missing string \"type\" in {value}")));
        };
        let regs = registered_mixers();
        let Some(reg) = regs.iter().find(|r| r.kind == kind) else {
            let known: Vec<&str> = regs.iter().map(|r| r.kind).collect();
            return Err(bad(format!(
                "unknown mixer type \"{kind}\"; registered: {}",
                known.join(", ")
            )));
        };
        let mut fields = map.clone();
        fields.remove("type");
        (reg.parse)(Value::Object(fields)).map_err(|e| bad(format!("{kind}: {e}")))
    }
}

impl fmt::Debug for MixerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MixerConfig({})", self.to_json())
    }
}

impl PartialEq for MixerConfig {
    fn eq(&self, other: &Self) -> bool {
        self.0.same(other.0.as_any())
    }
}

impl Serialize for MixerConfig {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for MixerConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Self::from_json(&value).map_err(serde::de::Error::custom)
    }
}

/// A mixer family that [`MixerConfig::from_json`] can read: its name, its default config and
/// its parser.
#[derive(Clone, Copy)]
pub struct MixerRegistration {
    /// The `"type"` tag ([`MixerSpec::kind`]).
    pub kind: &'static str,
    default: fn() -> MixerConfig,
    parse: fn(Value) -> serde_json::Result<MixerConfig>,
}

impl MixerRegistration {
    /// The registration of spec type `T`, named by its default's [`MixerSpec::kind`].
    pub fn of<T>() -> Self
    where
        T: MixerSpec + Serialize + DeserializeOwned + Default + Clone + PartialEq,
    {
        Self {
            kind: T::default().kind(),
            default: || MixerConfig::new(T::default()),
            parse: |v| serde_json::from_value::<T>(v).map(MixerConfig::new),
        }
    }

    /// The family's default config (the paper's setting).
    pub fn default_config(&self) -> MixerConfig {
        (self.default)()
    }
}

impl fmt::Debug for MixerRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MixerRegistration({})", self.kind)
    }
}

static EXTRA: RwLock<Vec<MixerRegistration>> = RwLock::new(Vec::new());

/// Makes a mixer defined outside this crate readable from JSON (configs, checkpoints'
/// `config.json`). Registering a kind that is already registered is an error.
pub fn register_mixer(reg: MixerRegistration) -> std::result::Result<(), MixerError> {
    if registered_mixers().iter().any(|r| r.kind == reg.kind) {
        return Err(MixerError::Config {
            mixer: reg.kind,
            msg: "a mixer of this type is already registered".into(),
        });
    }
    let mut extra = EXTRA.write().unwrap_or_else(|e| e.into_inner());
    extra.push(reg);
    Ok(())
}

/// Every registered mixer family: this crate's, then those added by [`register_mixer`].
pub fn registered_mixers() -> Vec<MixerRegistration> {
    let mut all = crate::builtin_mixers();
    all.extend(EXTRA.read().unwrap_or_else(|e| e.into_inner()).iter());
    all
}
