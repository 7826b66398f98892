//! Reading timm-style `model_args` from `config.json`: each family parses them into its own
//! `#[serde(deny_unknown_fields)]` struct named as the reference constructor's keywords, then
//! applies the fields it got in a deliberate order.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// Parses `args` into `A`. An error names the bad key and value; an unknown key's error lists
/// every key `A` accepts.
pub fn parse<A: DeserializeOwned>(family: &str, args: &Map<String, Value>) -> Result<A> {
    serde_json::from_value(Value::Object(args.clone())).map_err(|whole| {
        let culprit = args.iter().find_map(|(key, value)| {
            let one = Map::from_iter([(key.clone(), value.clone())]);
            let err = serde_json::from_value::<A>(Value::Object(one)).err()?;
            Some(format!("{key} = {value}: {err}"))
        });
        let msg = culprit.unwrap_or_else(|| whole.to_string());
        Error::config(format!("model_args of a {family} model"), msg)
    })
}

/// Overwrites `slot` with `value` if there is one.
pub fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// For an `Option` field whose `null` is a value (read by `T`) rather than an absent key; use
/// with `#[serde(default, deserialize_with = "present")]`.
pub fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> std::result::Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Fails unless a key the reference accepts is absent or has the one value tokenmix implements.
pub fn only(family: &str, key: &str, got: &Option<Value>, supported: Value) -> Result<()> {
    match got {
        Some(v) if *v != supported => Err(Error::config(
            format!("model_args of a {family} model"),
            format!("{key} = {v}: only {supported} is supported"),
        )),
        _ => Ok(()),
    }
}

/// An image size: one integer or `[height, width]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged, expecting = "an integer or [height, width]")]
pub enum ImgSize {
    /// A square side.
    Square(usize),
    /// `[height, width]`.
    Pair(usize, usize),
}

impl ImgSize {
    /// `(height, width)`.
    pub fn pair(self) -> (usize, usize) {
        match self {
            Self::Square(s) => (s, s),
            Self::Pair(h, w) => (h, w),
        }
    }
}

/// timm's `Optional[float] | list[Optional[float]]` per-stage argument.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "null, a number or a list of those")]
pub enum PerStage {
    /// One value for every stage.
    One(Option<f64>),
    /// One value per stage.
    List(Vec<Option<f64>>),
}

impl PerStage {
    /// One value for each of `n` stages; a list of another length is an error naming `key`.
    pub fn stages(self, key: &str, n: usize) -> Result<Vec<Option<f64>>> {
        match self {
            Self::One(v) => Ok(vec![v; n]),
            Self::List(v) if v.len() == n => Ok(v),
            Self::List(v) => Err(Error::config(
                "model_args",
                format!("{key} has {} entries for {n} stages", v.len()),
            )),
        }
    }
}
