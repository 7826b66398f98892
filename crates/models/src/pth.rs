//! Reading PyTorch checkpoints (`torch.save`'s zip format, the `.pth` / `.pt` / `.bin` files the
//! reference repositories publish) without running any of their code.
//!
//! A `torch.save` file is a zip archive holding `<dir>/data.pkl`, a pickle of the saved object in
//! which every tensor storage is a persistent id, and `<dir>/data/<key>`, each storage's raw
//! little-endian bytes. [`read_state_dict`] unpickles `data.pkl` with a small stack machine that
//! only builds values (as PyTorch's `weights_only` unpickler does: classes are names, calls are
//! recorded, nothing is imported or executed), finds the state dict in it, and copies each
//! tensor's elements out of its storage, bounds-checked. The result is the same tensor list a
//! safetensors file gives, so [`crate::checkpoint`] checks and loads it with the same strictness.
//!
//! candle has a pickle reader (`candle_core::pickle`); tokenmix does not use it because it
//! panics on short argument tuples, allocates string lengths taken from the file before reading
//! them, reads only from a path, and skips tensors it cannot read with a message on stderr
//! instead of an error.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

/// The element types of [`PthTensor`] (safetensors' names).
pub use safetensors::Dtype;

use crate::{Error, Result};

/// Most values the unpickler builds (a memo reference counts every value it copies), so that a
/// pickle cannot make it allocate without bound.
const MAX_VALUES: usize = 20_000_000;

/// Deepest nesting of containers the unpickler builds.
const MAX_DEPTH: usize = 256;

/// Largest `data.pkl` read, in bytes.
const MAX_PICKLE_BYTES: u64 = 1 << 30;

/// Keys under which training scripts store the model's state dict, tried in this order when the
/// checkpoint is not a state dict itself.
pub const STATE_DICT_KEYS: [&str; 4] = ["state_dict", "model", "module", "net"];

/// One tensor of a checkpoint: dtype, shape and its elements in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct PthTensor {
    /// Element type, in safetensors' terms.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// The elements, contiguous, little-endian.
    pub data: Vec<u8>,
}

/// A value built by the unpickler.
#[derive(Debug, Clone)]
enum Value {
    None,
    /// A bool, float or bytes value (their contents are never needed).
    Scalar(&'static str),
    Int(i64),
    /// An integer wider than 64 bits (its value is never needed).
    BigInt,
    Str(String),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A class or function named by `GLOBAL` / `STACK_GLOBAL`: module, name.
    Global(String, String),
    /// A call that is not one of the tensor rebuilders: what was called, and its arguments.
    Call(Box<Value>, Box<Value>),
    /// A tensor storage from a persistent id.
    Storage(Storage),
    /// A tensor rebuilt from a storage.
    Tensor(TensorRef),
}

/// A storage named by a persistent id `('storage', type, key, location, numel)`.
#[derive(Debug, Clone)]
struct Storage {
    dtype: Dtype,
    key: String,
    numel: u64,
}

/// A tensor as `torch._utils._rebuild_tensor_v2` describes it: a strided view of a storage.
#[derive(Debug, Clone)]
struct TensorRef {
    storage: Storage,
    offset: u64,
    shape: Vec<usize>,
    stride: Vec<u64>,
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

fn storage_dtype(class: &str) -> Option<Dtype> {
    Some(match class {
        "FloatStorage" => Dtype::F32,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "DoubleStorage" => Dtype::F64,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ShortStorage" => Dtype::I16,
        "CharStorage" => Dtype::I8,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::BOOL,
        _ => return None,
    })
}

/// Number of values in `v`, counting every element of every container.
fn size_of(v: &Value) -> usize {
    match v {
        Value::List(xs) | Value::Tuple(xs) => 1 + xs.iter().map(size_of).sum::<usize>(),
        Value::Dict(kv) => {
            1 + kv
                .iter()
                .map(|(k, v)| size_of(k) + size_of(v))
                .sum::<usize>()
        }
        Value::Call(f, a) => 1 + size_of(f) + size_of(a),
        _ => 1,
    }
}

/// Whether `v` nests containers at most `limit` deep (stops looking past the limit, so this
/// never recurses deeper than `limit`).
fn nests_within(v: &Value, limit: usize) -> bool {
    let inner = |x: &Value| limit > 0 && nests_within(x, limit - 1);
    match v {
        Value::List(xs) | Value::Tuple(xs) => xs.iter().all(inner),
        Value::Dict(kv) => kv.iter().all(|(k, v)| inner(k) && inner(v)),
        Value::Call(f, a) => inner(f) && inner(a),
        _ => true,
    }
}

/// Refuses to put `vs` inside a container when that would nest deeper than [`MAX_DEPTH`]
/// (which keeps every recursive walk, copy and drop of a value shallow).
fn nestable<'v>(vs: impl IntoIterator<Item = &'v Value>) -> Step<()> {
    if vs.into_iter().all(|v| nests_within(v, MAX_DEPTH)) {
        Ok(())
    } else {
        Err(format!(
            "the pickle nests containers more than {MAX_DEPTH} deep"
        ))
    }
}

/// The pickle stack machine: only the opcodes `torch.save` (protocols 2-5) and plain Python
/// containers use; anything else is an error naming the opcode.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack heights at each `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Values built so far (see [`MAX_VALUES`]).
    built: usize,
}

type Step<T> = std::result::Result<T, String>;

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            built: 0,
        }
    }

    fn take(&mut self, n: usize) -> Step<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("the pickle ends inside a value at byte {}", self.pos))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Step<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Step<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Step<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Step<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| "short read")?))
    }

    fn line(&mut self) -> Step<&'a [u8]> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("a text argument has no end of line")?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    fn text(bytes: &[u8]) -> Step<String> {
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }

    fn push(&mut self, v: Value) -> Step<()> {
        self.built += 1;
        if self.built > MAX_VALUES {
            return Err(format!("the pickle builds more than {MAX_VALUES} values"));
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Step<Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("an opcode pops past a MARK".into());
        }
        self.stack
            .pop()
            .ok_or_else(|| "the pickle's stack is empty".to_string())
    }

    fn top(&mut self) -> Step<&mut Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("an opcode reads past a MARK".into());
        }
        self.stack
            .last_mut()
            .ok_or_else(|| "the pickle's stack is empty".to_string())
    }

    /// The values above the last `MARK`, which go into a container.
    fn pop_mark(&mut self) -> Step<Vec<Value>> {
        let mark = self.marks.pop().ok_or("no MARK on the stack")?;
        let vs = self.stack.split_off(mark);
        nestable(&vs)?;
        Ok(vs)
    }

    /// The top value, which goes into a container or a call.
    fn pop_nested(&mut self) -> Step<Value> {
        let v = self.pop()?;
        nestable([&v])?;
        Ok(v)
    }

    fn memo_get(&mut self, id: u32) -> Step<()> {
        let v = self
            .memo
            .get(&id)
            .ok_or_else(|| format!("memo entry {id} is read before it is written"))?
            .clone();
        self.built += size_of(&v);
        self.push(v)
    }

    fn memo_put(&mut self, id: u32) -> Step<()> {
        let v = self
            .stack
            .last()
            .ok_or("the pickle's stack is empty")?
            .clone();
        self.built += size_of(&v);
        self.memo.insert(id, v);
        Ok(())
    }

    /// Runs the pickle to its `STOP` and returns the value it leaves.
    fn run(mut self) -> Step<Value> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                b'.' => break,                             // STOP
                0x80 => drop(self.u8()?),                  // PROTO
                0x95 => drop(self.u64()?),                 // FRAME
                b'(' => self.marks.push(self.stack.len()), // MARK
                b'0' => drop(self.pop()?),                 // POP
                b'1' => drop(self.pop_mark()?),            // POP_MARK
                b'2' => {
                    // DUP
                    let v = self.top()?.clone();
                    self.built += size_of(&v);
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Scalar("a bool"))?,
                0x89 => self.push(Value::Scalar("a bool"))?,
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v.into()))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v.into()))?
                }
                0x8a | 0x8b => {
                    // LONG1, LONG4: little-endian two's complement
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let b = self.take(n)?;
                    self.push(long(b))?;
                }
                b'I' | b'L' => {
                    // INT, LONG (text)
                    let t = Self::text(self.line()?)?;
                    let t = t.trim_end_matches('L');
                    let v = match t {
                        "00" | "01" => Value::Scalar("a bool"),
                        _ => t.parse().map(Value::Int).unwrap_or(Value::BigInt),
                    };
                    self.push(v)?;
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Scalar("a float"))?;
                }
                b'F' => {
                    let t = Self::text(self.line()?)?;
                    t.trim()
                        .parse::<f64>()
                        .map_err(|_| format!("bad float {t:?}"))?;
                    self.push(Value::Scalar("a float"))?;
                }
                b'X' | 0x8c | 0x8d => {
                    // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                    let n = match op {
                        b'X' => self.u32()? as u64,
                        0x8c => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = usize::try_from(n).map_err(|_| "a string longer than memory")?;
                    let s = Self::text(self.take(n)?)?;
                    self.push(Value::Str(s))?;
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                    let n = match op {
                        b'B' => self.u32()? as u64,
                        b'C' => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = usize::try_from(n).map_err(|_| "bytes longer than memory")?;
                    self.take(n)?;
                    self.push(Value::Scalar("bytes"))?;
                }
                b']' => self.push(Value::List(Vec::new()))?,
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b'}' => self.push(Value::Dict(Vec::new()))?,
                0x8f => self.push(Value::List(Vec::new()))?, // EMPTY_SET (kept as a list)
                b'l' => {
                    let xs = self.pop_mark()?;
                    self.push(Value::List(xs))?
                }
                b't' => {
                    let xs = self.pop_mark()?;
                    self.push(Value::Tuple(xs))?
                }
                b'd' => {
                    let xs = self.pop_mark()?;
                    self.push(Value::Dict(pairs(xs)?))?
                }
                0x91 => {
                    // FROZENSET
                    let xs = self.pop_mark()?;
                    self.push(Value::List(xs))?
                }
                0x85..=0x87 => {
                    // TUPLE1..TUPLE3
                    let n = (op - 0x84) as usize;
                    let mut xs = Vec::with_capacity(n);
                    for _ in 0..n {
                        xs.push(self.pop_nested()?);
                    }
                    xs.reverse();
                    self.push(Value::Tuple(xs))?;
                }
                b'a' => {
                    let v = self.pop_nested()?;
                    match self.top()? {
                        Value::List(xs) => xs.push(v),
                        _ => return Err(format!("APPEND to a non-list at byte {at}")),
                    }
                }
                b'e' | 0x90 => {
                    // APPENDS, ADDITEMS
                    let vs = self.pop_mark()?;
                    match self.top()? {
                        Value::List(xs) => xs.extend(vs),
                        _ => return Err(format!("APPENDS to a non-list at byte {at}")),
                    }
                }
                b's' => {
                    let v = self.pop_nested()?;
                    let k = self.pop_nested()?;
                    match self.top()? {
                        Value::Dict(kv) => kv.push((k, v)),
                        _ => return Err(format!("SETITEM on a non-dict at byte {at}")),
                    }
                }
                b'u' => {
                    let xs = self.pop_mark()?;
                    let new = pairs(xs)?;
                    match self.top()? {
                        Value::Dict(kv) => kv.extend(new),
                        _ => return Err(format!("SETITEMS on a non-dict at byte {at}")),
                    }
                }
                b'c' => {
                    // GLOBAL
                    let module = Self::text(self.line()?)?;
                    let name = Self::text(self.line()?)?;
                    self.push(Value::Global(module, name))?;
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.push(Value::Global(m, n))?,
                        _ => return Err(format!("STACK_GLOBAL of non-strings at byte {at}")),
                    }
                }
                b'R' | 0x81 => {
                    // REDUCE, NEWOBJ
                    let args = self.pop_nested()?;
                    let callable = self.pop_nested()?;
                    let v = call(callable, args).map_err(|e| format!("{e} (byte {at})"))?;
                    self.push(v)?;
                }
                0x92 => {
                    // NEWOBJ_EX: cls, args, kwargs
                    let _kwargs = self.pop()?;
                    let args = self.pop_nested()?;
                    let callable = self.pop_nested()?;
                    let v = call(callable, args).map_err(|e| format!("{e} (byte {at})"))?;
                    self.push(v)?;
                }
                b'b' => {
                    // BUILD: an object's state (OrderedDict's `_metadata`, a tensor's hooks,
                    // a training script's settings) is not needed and is dropped.
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    // BINPERSID
                    let pid = self.pop()?;
                    let v = persistent_load(pid).map_err(|e| format!("{e} (byte {at})"))?;
                    self.push(v)?;
                }
                b'q' => {
                    let id = self.u8()?;
                    self.memo_put(id.into())?
                }
                b'r' => {
                    let id = self.u32()?;
                    self.memo_put(id)?
                }
                0x94 => {
                    // MEMOIZE
                    let id = u32::try_from(self.memo.len()).map_err(|_| "memo overflow")?;
                    self.memo_put(id)?
                }
                b'h' => {
                    let id = self.u8()?;
                    self.memo_get(id.into())?
                }
                b'j' => {
                    let id = self.u32()?;
                    self.memo_get(id)?
                }
                b'p' => {
                    let t = Self::text(self.line()?)?;
                    let id = t.parse().map_err(|_| format!("bad memo index {t:?}"))?;
                    self.memo_put(id)?
                }
                b'g' => {
                    let t = Self::text(self.line()?)?;
                    let id = t.parse().map_err(|_| format!("bad memo index {t:?}"))?;
                    self.memo_get(id)?
                }
                _ => return Err(format!("unsupported pickle opcode 0x{op:02x} at byte {at}")),
            }
            if self.marks.len() > MAX_DEPTH {
                return Err(format!("the pickle opens more than {MAX_DEPTH} MARKs"));
            }
        }
        let v = self.stack.pop().ok_or("the pickle leaves no value")?;
        if !self.stack.is_empty() || !self.marks.is_empty() {
            return Err("the pickle leaves more than one value".into());
        }
        Ok(v)
    }
}

/// An integer from little-endian two's-complement bytes (`LONG1` / `LONG4`).
fn long(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Int(0);
    }
    if b.len() > 8 {
        return Value::BigInt;
    }
    let fill = if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
    let mut buf = [fill; 8];
    buf[..b.len()].copy_from_slice(b);
    Value::Int(i64::from_le_bytes(buf))
}

fn pairs(xs: Vec<Value>) -> Step<Vec<(Value, Value)>> {
    if !xs.len().is_multiple_of(2) {
        return Err("a dict has a key without a value".into());
    }
    let mut it = xs.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn tuple(v: Value, what: &str) -> Step<Vec<Value>> {
    match v {
        Value::Tuple(xs) => Ok(xs),
        other => Err(format!("{what}: expected a tuple, found {}", kind(&other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Scalar(what) => what,
        Value::Int(_) | Value::BigInt => "an int",
        Value::Str(_) => "a string",
        Value::List(_) => "a list",
        Value::Tuple(_) => "a tuple",
        Value::Dict(_) => "a dict",
        Value::Global(..) => "a class",
        Value::Call(..) => "an object",
        Value::Storage(_) => "a storage",
        Value::Tensor(_) => "a tensor",
    }
}

fn uint(v: &Value, what: &str) -> Step<u64> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as u64),
        other => Err(format!(
            "{what}: expected a non-negative int, found {}",
            kind(other)
        )),
    }
}

fn uints(v: Value, what: &str) -> Step<Vec<u64>> {
    tuple(v, what)?.iter().map(|x| uint(x, what)).collect()
}

/// `persistent_load` of `torch.save`: `('storage', storage_type, key, location, numel)`.
fn persistent_load(pid: Value) -> Step<Value> {
    let items = tuple(pid, "a persistent id")?;
    let [tag, class, key, _location, numel] = <[Value; 5]>::try_from(items)
        .map_err(|xs| format!("a persistent id of {} items, not 5", xs.len()))?;
    if !matches!(&tag, Value::Str(s) if s == "storage") {
        return Err("a persistent id that is not a storage".into());
    }
    let dtype = match &class {
        Value::Global(m, n) if m == "torch" => {
            storage_dtype(n).ok_or_else(|| format!("storage type torch.{n} is not supported"))?
        }
        _ => return Err(format!("a storage of type {}", kind(&class))),
    };
    let key = match key {
        Value::Str(k) => k,
        other => return Err(format!("a storage key that is {}", kind(&other))),
    };
    let numel = uint(&numel, "a storage's size")?;
    Ok(Value::Storage(Storage { dtype, key, numel }))
}

/// What a `REDUCE` of `callable` on `args` builds: tensors for PyTorch's tensor rebuilders, an
/// empty dict for `OrderedDict()`, a recorded call otherwise.
fn call(callable: Value, args: Value) -> Step<Value> {
    let Value::Global(module, name) = &callable else {
        return Ok(Value::Call(Box::new(callable), Box::new(args)));
    };
    match (module.as_str(), name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => rebuild_tensor(args),
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            let mut xs = tuple(args, "_rebuild_parameter's arguments")?;
            if xs.is_empty() {
                return Err("_rebuild_parameter without arguments".into());
            }
            match xs.swap_remove(0) {
                t @ Value::Tensor(_) => Ok(t),
                other => Err(format!("a parameter of {}", kind(&other))),
            }
        }
        ("torch._tensor", "_rebuild_from_type_v2") => {
            let xs = tuple(args, "_rebuild_from_type_v2's arguments")?;
            let [func, _new_type, inner, ..] = <[Value; 4]>::try_from(xs)
                .map_err(|xs| format!("_rebuild_from_type_v2 with {} arguments", xs.len()))?;
            call(func, inner)
        }
        ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
        _ => Ok(Value::Call(Box::new(callable), Box::new(args))),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
fn rebuild_tensor(args: Value) -> Step<Value> {
    let mut xs = tuple(args, "_rebuild_tensor_v2's arguments")?;
    if xs.len() < 4 {
        return Err(format!("_rebuild_tensor_v2 with {} arguments", xs.len()));
    }
    xs.truncate(4);
    let stride = uints(xs.pop().unwrap_or(Value::None), "a tensor's stride")?;
    let shape = uints(xs.pop().unwrap_or(Value::None), "a tensor's size")?;
    let offset = uint(
        &xs.pop().unwrap_or(Value::None),
        "a tensor's storage offset",
    )?;
    let storage = match xs.pop() {
        Some(Value::Storage(s)) => s,
        Some(other) => return Err(format!("a tensor whose storage is {}", kind(&other))),
        None => return Err("a tensor without a storage".into()),
    };
    if shape.len() != stride.len() {
        return Err(format!(
            "a tensor of {} dimensions with {} strides",
            shape.len(),
            stride.len()
        ));
    }
    let shape = shape
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| "a dimension larger than memory".to_string()))
        .collect::<Step<Vec<usize>>>()?;
    Ok(Value::Tensor(TensorRef {
        storage,
        offset,
        shape,
        stride,
    }))
}

/// The state dict inside `root`: `root` itself when it is a dict of tensors, else the dict under
/// `key`, else under the first of [`STATE_DICT_KEYS`] present.
fn find_state_dict(root: Value, key: Option<&str>) -> Step<Vec<(Value, Value)>> {
    let Value::Dict(entries) = root else {
        return Err(format!(
            "the checkpoint holds {}, not a dict (a whole pickled model cannot be read; save \
             its state_dict())",
            kind(&root)
        ));
    };
    let is_tensor_dict = |kv: &[(Value, Value)]| {
        !kv.is_empty() && kv.iter().all(|(_, v)| matches!(v, Value::Tensor(_)))
    };
    let names: Vec<String> = entries
        .iter()
        .filter_map(|(k, _)| match k {
            Value::Str(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    let wanted: Vec<&str> = match key {
        Some(k) => vec![k],
        None if is_tensor_dict(&entries) => return Ok(entries),
        None => STATE_DICT_KEYS.to_vec(),
    };
    for want in &wanted {
        let found = entries
            .iter()
            .position(|(k, _)| matches!(k, Value::Str(s) if s == want));
        if let Some(i) = found {
            return match entries.into_iter().nth(i).map(|(_, v)| v) {
                Some(Value::Dict(kv)) => Ok(kv),
                Some(other) => Err(format!(
                    "the checkpoint's '{want}' is {}, not a dict",
                    kind(&other)
                )),
                None => Err(format!("the checkpoint has no '{want}'")),
            };
        }
    }
    let shown: Vec<String> = names.iter().take(12).cloned().collect();
    Err(match key {
        Some(k) => format!(
            "the checkpoint has no key '{k}' (its keys: {})",
            shown.join(", ")
        ),
        None => format!(
            "no state dict found: the checkpoint is not a dict of tensors and has none of the \
             keys {} (its keys: {}); name the key that holds it",
            STATE_DICT_KEYS.join(", "),
            shown.join(", ")
        ),
    })
}

fn elem_size(dtype: Dtype) -> usize {
    dtype.bitsize().div_ceil(8)
}

/// Copies the elements of `t` out of `storage` (the storage's bytes) in row-major order.
fn gather(name: &str, t: &TensorRef, storage: &[u8]) -> Step<Vec<u8>> {
    let es = elem_size(t.storage.dtype);
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("{name}: its size {:?} overflows", t.shape))?;
    let storage_elems = (storage.len() / es) as u64;
    if numel == 0 {
        return Ok(Vec::new());
    }
    // The farthest element the view reaches must lie inside the storage.
    let mut last = t.offset;
    for (&d, &s) in t.shape.iter().zip(&t.stride) {
        last = (d as u64 - 1)
            .checked_mul(s)
            .and_then(|x| last.checked_add(x))
            .ok_or_else(|| format!("{name}: its strides overflow"))?;
    }
    if last >= storage_elems {
        return Err(format!(
            "{name}: a view of shape {:?}, stride {:?}, offset {} reaches element {last} of a \
             storage of {storage_elems}",
            t.shape, t.stride, t.offset
        ));
    }
    if numel as u64 > storage_elems {
        return Err(format!(
            "{name}: {numel} elements viewed from a storage of {storage_elems}"
        ));
    }
    let contiguous = {
        let mut expect = 1u64;
        let mut ok = true;
        for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
            if d != 1 && s != expect {
                ok = false;
            }
            expect = expect.saturating_mul(d as u64);
        }
        ok
    };
    if contiguous {
        let start = t.offset as usize * es;
        return Ok(storage[start..start + numel * es].to_vec());
    }
    let mut out = Vec::with_capacity(numel * es);
    let mut index = vec![0usize; t.shape.len()];
    for _ in 0..numel {
        let at = t.offset
            + index
                .iter()
                .zip(&t.stride)
                .map(|(&i, &s)| i as u64 * s)
                .sum::<u64>();
        let at = at as usize * es;
        out.extend_from_slice(&storage[at..at + es]);
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(out)
}

/// Reads the state dict of the `torch.save` checkpoint `bytes` (named `path` in errors): the
/// dict itself, or the one under `key` (else under the first of [`STATE_DICT_KEYS`] present),
/// with a `module.` prefix on every name (as `DataParallel` saves) removed. Tensors are returned
/// in the checkpoint's order, each in its stored dtype. Everything about the file is checked
/// before tensor data is copied: the archive, the pickle, that every tensor is a strided view
/// inside its storage, and that each storage's bytes are as long as its pickled size says.
pub fn read_state_dict(
    bytes: &[u8],
    path: &Path,
    key: Option<&str>,
) -> Result<Vec<(String, PthTensor)>> {
    if !bytes.starts_with(b"PK\x03\x04") {
        let legacy = bytes.starts_with(&[0x80, 0x02]) || bytes.starts_with(&[0x80, 0x04]);
        return Err(bad(
            path,
            if legacy {
                "a PyTorch checkpoint in the legacy (pre-1.6) format; re-save it with a recent \
                 torch.save"
            } else {
                "not a PyTorch checkpoint (torch.save writes a zip archive)"
            },
        ));
    }
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| bad(path, format!("not a readable zip archive: {e}")))?;
    let pkl = (0..zip.len())
        .filter_map(|i| {
            zip.name_for_index(i)
                .and_then(|n| n.ok())
                .map(|n| n.into_owned())
        })
        .find(|n| n.ends_with("/data.pkl") || n == "data.pkl")
        .ok_or_else(|| {
            bad(
                path,
                "the archive holds no data.pkl (a TorchScript archive, or not written by \
                 torch.save)",
            )
        })?;
    let dir = pkl.trim_end_matches("data.pkl").to_string();
    let order = format!("{dir}byteorder");
    if zip.index_for_name(&order).is_some() {
        let order_bytes = read_entry(&mut zip, &order, 16, path)?;
        if order_bytes != b"little" {
            return Err(bad(
                path,
                format!(
                    "its tensors are stored {} (only little-endian checkpoints are read)",
                    if order_bytes == b"big" {
                        "big-endian"
                    } else {
                        "in an unknown byte order"
                    }
                ),
            ));
        }
    }
    let pickle = read_entry(&mut zip, &pkl, MAX_PICKLE_BYTES, path)?;
    let root = Unpickler::new(&pickle)
        .run()
        .map_err(|e| bad(path, format!("{pkl}: {e}")))?;
    let entries = find_state_dict(root, key).map_err(|e| bad(path, e))?;

    let mut refs = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let name = match k {
            Value::Str(s) => s,
            other => {
                return Err(bad(
                    path,
                    format!("a state-dict key that is {}", kind(&other)),
                ))
            }
        };
        match v {
            Value::Tensor(t) => refs.push((name, t)),
            other => {
                return Err(bad(
                    path,
                    format!("state-dict entry {name} is {}, not a tensor", kind(&other)),
                ))
            }
        }
    }
    if !refs.is_empty() && refs.iter().all(|(n, _)| n.starts_with("module.")) {
        for (n, _) in &mut refs {
            n.drain(..7);
        }
    }
    let mut seen = std::collections::HashSet::new();
    if let Some((dup, _)) = refs.iter().find(|(n, _)| !seen.insert(n.as_str())) {
        return Err(bad(path, format!("tensor {dup} appears twice")));
    }

    // Every storage is read once, after its size is checked against the pickle's.
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut copied: u64 = 0;
    let budget = 4 * bytes.len() as u64 + (1 << 20);
    let mut out = Vec::with_capacity(refs.len());
    for (name, t) in refs {
        let es = elem_size(t.storage.dtype) as u64;
        if !storages.contains_key(&t.storage.key) {
            let entry = format!("{dir}data/{}", t.storage.key);
            let want = t
                .storage
                .numel
                .checked_mul(es)
                .ok_or_else(|| bad(path, format!("{name}: its storage's size overflows")))?;
            let data = read_entry(&mut zip, &entry, want, path)?;
            if data.len() as u64 != want {
                return Err(bad(
                    path,
                    format!(
                        "{entry} holds {} bytes; the pickle gives its storage {} elements of {es} \
                         bytes",
                        data.len(),
                        t.storage.numel
                    ),
                ));
            }
            storages.insert(t.storage.key.clone(), data);
        }
        let storage = &storages[&t.storage.key];
        let data = gather(&name, &t, storage).map_err(|e| bad(path, e))?;
        copied += data.len() as u64;
        if copied > budget {
            return Err(bad(
                path,
                "its tensors view far more data than the file holds (overlapping views)",
            ));
        }
        out.push((
            name,
            PthTensor {
                dtype: t.storage.dtype,
                shape: t.shape,
                data,
            },
        ));
    }
    Ok(out)
}

/// The bytes of zip entry `name`, refused when it is compressed or longer than `max`.
fn read_entry(
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    max: u64,
    path: &Path,
) -> Result<Vec<u8>> {
    let mut file = zip
        .by_name(name)
        .map_err(|e| bad(path, format!("{name}: {e}")))?;
    if file.size() > max {
        return Err(bad(
            path,
            format!(
                "{name} is {} bytes, more than the {max} expected",
                file.size()
            ),
        ));
    }
    let mut data = Vec::with_capacity(file.size() as usize);
    file.by_ref()
        .take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| bad(path, format!("{name}: {e}")))?;
    if data.len() as u64 > max {
        return Err(bad(
            path,
            format!("{name} is longer than the {max} bytes expected"),
        ));
    }
    Ok(data)
}

/// The tensors of `tensors` as a safetensors file (names sorted, stored dtypes kept).
pub fn to_safetensors(tensors: &[(String, PthTensor)]) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(n, t)| {
            safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map(|v| (n.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Input(format!("cannot write safetensors: {e}")))?;
    safetensors::serialize(views, None)
        .map_err(|e| Error::Input(format!("cannot write safetensors: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: &[u8]) -> Step<Value> {
        Unpickler::new(p).run()
    }

    #[test]
    fn ints_and_containers() {
        // (1, [2, 3], {'a': -1})
        let p = b"\x80\x02K\x01]q\x00(K\x02K\x03e}q\x01X\x01\x00\x00\x00aJ\xff\xff\xff\xffs\x87.";
        let v = run(p).unwrap();
        let Value::Tuple(xs) = v else { panic!("{v:?}") };
        assert!(matches!(xs[0], Value::Int(1)));
        assert!(matches!(&xs[1], Value::List(l) if l.len() == 2));
        assert!(matches!(&xs[2], Value::Dict(d) if matches!(d[0].1, Value::Int(-1))));
    }

    #[test]
    fn malformed_pickles_are_errors() {
        for p in [
            &b""[..],
            b"\x80\x02",
            b"\x80\x02X\xff\xff\xff\xffabc.",
            b"\x80\x02h\x05.",
            b"\x80\x02(K\x01u.",
            b"\x80\x02a.",
            b"\x80\x02K\x01K\x02.",
            b"\x80\x02\xff.",
            b"\x80\x02(0.",
        ] {
            assert!(run(p).is_err(), "{p:?}");
        }
    }

    #[test]
    fn memo_copies_count_against_the_budget() {
        // A list that doubles through the memo 40 times would hold 2^40 values.
        let mut p = b"\x80\x02]q\x00".to_vec();
        for _ in 0..40 {
            p.extend_from_slice(b"(h\x00h\x00lq\x00");
        }
        p.push(b'.');
        let err = run(&p).unwrap_err();
        assert!(err.contains("values"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused_without_deep_recursion() {
        // 100,000 lists appended into each other, and 100,000 nested tuples through the memo.
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat_n(b']', 100_000));
        p.extend(std::iter::repeat_n(b'a', 99_999));
        p.push(b'.');
        let err = run(&p).unwrap_err();
        assert!(err.contains("nests containers more than 256 deep"), "{err}");
        let mut p = b"\x80\x02)q\x00".to_vec();
        for _ in 0..100_000 {
            p.extend_from_slice(b"h\x00\x85q\x00");
        }
        p.push(b'.');
        let err = run(&p).unwrap_err();
        assert!(err.contains("deep"), "{err}");
    }

    #[test]
    fn strided_views_are_gathered_and_bounded() {
        let storage: Vec<u8> = (0u8..6).collect();
        let t = |shape: Vec<usize>, stride: Vec<u64>, offset| TensorRef {
            storage: Storage {
                dtype: Dtype::U8,
                key: "0".into(),
                numel: 6,
            },
            offset,
            shape,
            stride,
        };
        // The transpose of a 2x3 matrix.
        assert_eq!(
            gather("t", &t(vec![3, 2], vec![1, 3], 0), &storage).unwrap(),
            vec![0, 3, 1, 4, 2, 5]
        );
        assert_eq!(
            gather("t", &t(vec![2, 2], vec![2, 1], 1), &storage).unwrap(),
            vec![1, 2, 3, 4]
        );
        assert!(gather("t", &t(vec![2, 3], vec![3, 1], 1), &storage).is_err());
        assert!(gather("t", &t(vec![7], vec![0], 0), &storage).is_err());
        assert!(gather("t", &t(vec![2, 2], vec![u64::MAX, 1], 0), &storage).is_err());
    }
}
