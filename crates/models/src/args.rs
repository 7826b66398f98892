//! Parsing of timm-style `model_args` values from `config.json`.

use serde_json::Value;

/// A non-negative integer.
pub fn as_usize(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|x| usize::try_from(x).ok())
}

/// A list of non-negative integers.
pub fn usize_list(v: &Value) -> Option<Vec<usize>> {
    v.as_array()?.iter().map(as_usize).collect()
}

/// An image size: one integer or `[height, width]`.
pub fn img_size_arg(v: &Value) -> Option<(usize, usize)> {
    match v {
        Value::Array(a) if a.len() == 2 => Some((as_usize(&a[0])?, as_usize(&a[1])?)),
        _ => as_usize(v).map(|s| (s, s)),
    }
}

/// timm's `Optional[float] | list[Optional[float]]` per-stage argument.
pub fn per_stage_opt(v: &Value, n: usize) -> Option<Vec<Option<f64>>> {
    let one = |v: &Value| -> Option<Option<f64>> {
        match v {
            Value::Null => Some(None),
            _ => v.as_f64().map(Some),
        }
    };
    match v {
        Value::Array(a) if a.len() == n => a.iter().map(one).collect(),
        Value::Array(_) => None,
        _ => one(v).map(|x| vec![x; n]),
    }
}

/// A number.
pub fn as_f64(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}
