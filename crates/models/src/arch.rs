//! What every family's config provides ([`Architecture`]) and the architecture of any model
//! ([`ArchConfig`]).
//!
//! A family is one file: its config implements [`Architecture`] and [`Family`], and one line of
//! [`FAMILIES`](crate::FAMILIES) registers it under its `family` tag. A config from outside this
//! crate can be wrapped in an [`ArchConfig`] too, to be built, loaded strictly or measured.

use std::any::Any;
use std::fmt::Debug;
use std::ops::{Deref, DerefMut};

use candle_core::{Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use serde::de::{DeserializeOwned, Error as _};
use serde::ser::{Error as _, SerializeMap};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::{Error, FeatureInfo, ImageModel, ModelEntry, Result};

/// The hyper-parameters every family has, validated the same way for all of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Common {
    /// Input image channels, in `1..=4096`.
    pub in_chans: usize,
    /// Classifier outputs, at most 1 000 000; 0 (no classifier) where the family allows it.
    pub num_classes: usize,
    /// Stochastic depth of the last block in training, in `[0, 1)`; `None` for a family without
    /// stochastic depth.
    pub drop_path_rate: Option<f64>,
}

/// A hidden width given as a multiple of another width (`mlp_ratio` and the like): the ratio must
/// be in `(0, 64]` and the width it gives at least 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratio {
    /// The hyper-parameter, as `model_args` names it.
    pub name: &'static str,
    /// Its value.
    pub value: f64,
    /// The width it multiplies.
    pub dim: usize,
    /// The hidden width the model builds from it.
    pub hidden: usize,
}

impl Ratio {
    /// A ratio whose hidden width is `value * dim` truncated, as the models compute it.
    pub fn of(name: &'static str, value: f64, dim: usize) -> Self {
        Self {
            name,
            value,
            dim,
            hidden: (value * dim as f64) as usize,
        }
    }
}

/// How training initializes convolution weights: truncated normal (timm's models, whose norms
/// rescale activations) or Kaiming normal over the fan-out (cvnets' CNNs such as AFFNet, whose
/// batch norms do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvInit {
    /// `trunc_normal_(std=0.02)`.
    TruncNormal,
    /// `kaiming_normal_(mode="fan_out")`.
    KaimingFanOut,
}

/// Implements [`Architecture::common`] and [`Architecture::set_common`] inside an
/// `impl Architecture` for a config whose shared fields are `in_chans`, `num_classes` and
/// `drop_path_rate: f64`.
macro_rules! common_fields {
    () => {
        fn common(&self) -> $crate::Common {
            $crate::Common {
                in_chans: self.in_chans,
                num_classes: self.num_classes,
                drop_path_rate: Some(self.drop_path_rate),
            }
        }

        fn set_common(&mut self, c: $crate::Common) {
            self.in_chans = c.in_chans;
            self.num_classes = c.num_classes;
            if let Some(rate) = c.drop_path_rate {
                self.drop_path_rate = rate;
            }
        }
    };
}
pub(crate) use common_fields;

/// The architecture of one family: builds the model and knows its size rules.
pub trait Architecture: DynFamily + Debug + Send + Sync {
    /// Builds the model, reading its tensors from `vb`.
    fn build(&self, vb: VarBuilder) -> CandleResult<Box<dyn ImageModel>>;

    /// Multiply-accumulates of one forward pass of one `h x w` image (at the fixed input size for
    /// models that have one); 0 for a configuration that does not validate.
    fn macs(&self, h: usize, w: usize) -> u64;

    /// The hyper-parameters every family has.
    fn common(&self) -> Common;

    /// The feature maps the built model produces, as its
    /// [`ImageModel::feature_info`] reports them.
    fn feature_info(&self) -> Vec<FeatureInfo>;

    /// Sets the hyper-parameters every family has (a family without stochastic depth ignores
    /// `drop_path_rate`).
    fn set_common(&mut self, common: Common);

    /// The family's own rules, beyond those of [`Common`] and [`ratios`](Self::ratios); the
    /// message names the bad value.
    fn check(&self) -> std::result::Result<(), String>;

    /// Every hidden width set by a ratio, for [`validate`](Self::validate).
    fn ratios(&self) -> Vec<Ratio> {
        Vec::new()
    }

    /// Whether the model always has a classifier (`num_classes` 0 is then refused).
    fn needs_classifier(&self) -> bool {
        false
    }

    /// Sets the hyper-parameters that timm-style `model_args` name (parsed with the reference
    /// constructor's keyword names; an unknown key is an error listing the accepted ones).
    /// Nothing is validated; [`apply_model_args`](Self::apply_model_args) also validates.
    fn set_model_args(&mut self, args: &Map<String, Value>) -> Result<()>;

    /// Adapts the parts tied to the input size (RandFormer's and the MLP-Mixer family's
    /// token-mixing weights) to `h x w` inputs.
    fn set_image_size(&mut self, _h: usize, _w: usize) {}

    /// The only input size the model takes, for models whose weights fix it.
    fn fixed_image_size(&self) -> Option<(usize, usize)> {
        None
    }

    /// Whether a checkpoint tensor `name` of shape `found` can be adapted to the `expected`
    /// shape when loading (GFNet's filters and position embedding at another input size).
    fn can_resize(&self, _name: &str, _found: &[usize], _expected: &[usize]) -> bool {
        false
    }

    /// Adapts a tensor accepted by [`can_resize`](Self::can_resize) to `expected`.
    fn resize_tensor(&self, name: &str, _t: &Tensor, expected: &[usize]) -> CandleResult<Tensor> {
        candle_core::bail!("{name} cannot be resized to {expected:?}")
    }

    /// Renames from the authors' checkpoint names to the model's: `(from, to)` prefixes, the
    /// first that matches a stored name replacing its start (timm's `checkpoint_filter_fn`, as
    /// data). Applied to every checkpoint loaded or converted for the model.
    fn checkpoint_renames(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// The model's name for each of a checkpoint's tensor `names` (in their order), for layouts
    /// that only the whole list of names tells apart (sail-sg's original MetaFormer names against
    /// timm's). The default applies [`checkpoint_renames`](Self::checkpoint_renames) to each.
    fn checkpoint_names(&self, names: &[&str]) -> Vec<String> {
        names
            .iter()
            .map(|name| {
                self.checkpoint_renames()
                    .iter()
                    .find_map(|(from, to)| {
                        name.strip_prefix(from).map(|rest| format!("{to}{rest}"))
                    })
                    .unwrap_or_else(|| name.to_string())
            })
            .collect()
    }

    /// How training initializes convolution weights.
    fn conv_init(&self) -> ConvInit {
        ConvInit::TruncNormal
    }

    /// Checks the whole configuration: [`Common`], the family's rules, then every
    /// [`Ratio`]; the message names the bad value.
    fn validate(&self) -> std::result::Result<(), String> {
        check_common(self.common(), self.needs_classifier())?;
        self.check()?;
        self.ratios().iter().try_for_each(check_ratio)
    }

    /// [`set_model_args`](Self::set_model_args), then [`validate`](Self::validate).
    fn apply_model_args(&mut self, args: &Map<String, Value>) -> Result<()> {
        self.set_model_args(args)?;
        self.validate()
            .map_err(|e| Error::config(format!("model_args of a {} model", self.family()), e))
    }
}

fn check_common(c: Common, needs_classifier: bool) -> std::result::Result<(), String> {
    if !(1..=4096).contains(&c.in_chans) {
        return Err(format!("in_chans must be in 1..=4096, got {}", c.in_chans));
    }
    let min_classes = usize::from(needs_classifier);
    if !(min_classes..=1_000_000).contains(&c.num_classes) {
        return Err(format!(
            "num_classes must be in {min_classes}..=1000000, got {}",
            c.num_classes
        ));
    }
    match c.drop_path_rate {
        Some(r) if !(0.0..1.0).contains(&r) => {
            Err(format!("drop_path_rate must be in [0, 1), got {r}"))
        }
        _ => Ok(()),
    }
}

fn check_ratio(r: &Ratio) -> std::result::Result<(), String> {
    if !(r.value > 0.0 && r.value <= 64.0) {
        return Err(format!("{} must be in (0, 64], got {}", r.name, r.value));
    }
    if r.hidden == 0 {
        return Err(format!(
            "{} {} gives a hidden width of 0 at width {}; it must be at least 1",
            r.name, r.value, r.dim
        ));
    }
    Ok(())
}

/// A registrable family: an [`Architecture`] with a `family` tag and a JSON form.
pub trait Family: Architecture + Clone + Serialize + DeserializeOwned + 'static {
    /// The `family` tag of the config's JSON, e.g. `meta_former`.
    const NAME: &'static str;
    /// The family's named models (its part of the zoo), under the reference's registered names.
    const MODELS: &'static [ModelEntry] = &[];
}

/// The object-safe part of [`Family`], implemented for every family.
pub trait DynFamily {
    /// The `family` tag ([`Family::NAME`]).
    fn family(&self) -> &'static str;
    /// A boxed copy.
    fn clone_arch(&self) -> Box<dyn Architecture>;
    /// The config's fields as JSON.
    fn to_json(&self) -> serde_json::Result<Value>;
    /// The config, for downcasting.
    fn as_any(&self) -> &dyn Any;
    /// The config, for downcasting.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Family> DynFamily for T {
    fn family(&self) -> &'static str {
        T::NAME
    }

    fn clone_arch(&self) -> Box<dyn Architecture> {
        Box::new(self.clone())
    }

    fn to_json(&self) -> serde_json::Result<Value> {
        serde_json::to_value(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// One line of the family list: a `family` tag and how to read that family's JSON.
#[derive(Debug, Clone, Copy)]
pub struct Registration {
    /// The `family` tag.
    pub name: &'static str,
    /// The family's named models.
    pub models: &'static [ModelEntry],
    from_json: fn(Value) -> serde_json::Result<ArchConfig>,
}

impl Registration {
    /// The registration of family `T`.
    pub const fn of<T: Family>() -> Self {
        Self {
            name: T::NAME,
            models: T::MODELS,
            from_json: |v| serde_json::from_value::<T>(v).map(ArchConfig::new),
        }
    }
}

/// The architecture of a model: any family's config, with its hyper-parameters.
///
/// It dereferences to the [`Architecture`] it holds; its JSON is the config's fields with the
/// `family` tag first, e.g. `{"family": "meta_former", "in_chans": 3, ...}`.
#[derive(Debug)]
pub struct ArchConfig(Box<dyn Architecture>);

impl ArchConfig {
    /// Wraps a family's config.
    pub fn new<T: Family>(config: T) -> Self {
        Self(Box::new(config))
    }

    /// Wraps a boxed config (of a family defined anywhere).
    pub fn from_box(config: Box<dyn Architecture>) -> Self {
        Self(config)
    }

    /// The config, if it is a `T`.
    pub fn downcast_ref<T: Family>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }

    /// The config, if it is a `T`.
    pub fn downcast_mut<T: Family>(&mut self) -> Option<&mut T> {
        self.0.as_any_mut().downcast_mut()
    }

    /// Input channels.
    pub fn in_chans(&self) -> usize {
        self.common().in_chans
    }

    /// Classifier width.
    pub fn num_classes(&self) -> usize {
        self.common().num_classes
    }

    /// Sets the input channels.
    pub fn set_in_chans(&mut self, n: usize) {
        self.update_common(|c| c.in_chans = n);
    }

    /// Sets the classifier width (0 removes the classifier where the family allows it).
    pub fn set_num_classes(&mut self, n: usize) {
        self.update_common(|c| c.num_classes = n);
    }

    /// Sets the stochastic-depth rate of the last block for training (a family without
    /// stochastic depth, such as AFFNet, ignores it).
    pub fn set_drop_path_rate(&mut self, rate: f64) {
        self.update_common(|c| c.drop_path_rate = Some(rate));
    }

    fn update_common(&mut self, edit: impl FnOnce(&mut Common)) {
        let mut common = self.common();
        edit(&mut common);
        self.set_common(common);
    }
}

impl<T: Family> From<T> for ArchConfig {
    fn from(config: T) -> Self {
        Self::new(config)
    }
}

impl Deref for ArchConfig {
    type Target = dyn Architecture;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

impl DerefMut for ArchConfig {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut()
    }
}

impl Clone for ArchConfig {
    fn clone(&self) -> Self {
        Self(self.0.clone_arch())
    }
}

impl PartialEq for ArchConfig {
    fn eq(&self, other: &Self) -> bool {
        self.family() == other.family()
            && matches!((self.to_json(), other.to_json()), (Ok(a), Ok(b)) if a == b)
    }
}

impl Serialize for ArchConfig {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let fields = match self.to_json().map_err(S::Error::custom)? {
            Value::Object(fields) => fields,
            other => Map::from_iter([("config".to_string(), other)]),
        };
        let mut map = s.serialize_map(Some(fields.len() + 1))?;
        map.serialize_entry("family", self.family())?;
        for (key, value) in &fields {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ArchConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut fields = Map::deserialize(d)?;
        let family = match fields.remove("family") {
            Some(Value::String(name)) => name,
            _ => return Err(D::Error::missing_field("family")),
        };
        let registration = crate::FAMILIES
            .iter()
            .find(|f| f.name == family)
            .ok_or_else(|| {
                let names: Vec<&str> = crate::FAMILIES.iter().map(|f| f.name).collect();
                D::Error::custom(format!(
                    "unknown family '{family}', expected one of: {}",
                    names.join(", ")
                ))
            })?;
        (registration.from_json)(Value::Object(fields)).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{list_models, MlpMixerConfig};

    #[test]
    fn every_zoo_config_round_trips_through_json() {
        for m in list_models("") {
            let cfg = m.config();
            let json = serde_json::to_value(&cfg).unwrap();
            assert_eq!(json["family"], cfg.family(), "{}", m.name);
            let back: ArchConfig = serde_json::from_value(json).unwrap();
            assert_eq!(back, cfg, "{}", m.name);
        }
    }

    #[test]
    fn unknown_families_are_named() {
        let err = serde_json::from_str::<ArchConfig>(r#"{"family": "vit"}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown family 'vit'")
                && err.to_string().contains("meta_former"),
            "{err}"
        );
    }

    #[test]
    fn zero_wide_hidden_layers_are_refused() {
        let mut cfg = ArchConfig::new(MlpMixerConfig::mixer(16, 2, 768));
        let args = serde_json::json!({"embed_dim": 2, "mlp_ratio": [0.5, 0.25]});
        let err = cfg
            .apply_model_args(args.as_object().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("hidden width of 0"), "{err}");
    }

    #[test]
    fn shared_fields_are_checked_for_every_family() {
        for m in list_models("") {
            let mut cfg = m.config();
            cfg.set_in_chans(0);
            assert!(
                cfg.validate().unwrap_err().contains("in_chans"),
                "{}",
                m.name
            );
            let mut cfg = m.config();
            cfg.set_num_classes(2_000_000);
            assert!(
                cfg.validate().unwrap_err().contains("num_classes"),
                "{}",
                m.name
            );
        }
    }

    #[test]
    fn configs_downcast_to_their_family() {
        let cfg = crate::model_entry("mixer_s16_224").unwrap().config();
        assert_eq!(cfg.downcast_ref::<MlpMixerConfig>().unwrap().patch_size, 16);
        assert!(cfg.downcast_ref::<crate::GfnetConfig>().is_none());
    }
}
