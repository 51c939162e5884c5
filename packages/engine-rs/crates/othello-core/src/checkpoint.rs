//! The trainsvc checkpoint format, version 1 (`docs/checkpoint-format.md`).
//!
//! A safetensors file whose `__metadata__` carries the tree structure, the
//! caller's metadata and CRC32Cs, every JSON text in Python's canonical form
//! (`json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True)`),
//! so that this writer and the Python library produce the same bytes.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::EngineError;

mod dir;
pub use dir::{
    parse_checkpoint_name, retention_deletes, retention_policy, CheckpointDir, CheckpointInfo,
    CheckpointName, MAX_STEP,
};

/// Format name in `trainsvc.format`.
pub const FORMAT_NAME: &str = "trainsvc-checkpoint";
/// The format version this build reads and writes.
pub const FORMAT_VERSION: &str = "1";
/// Largest header a reader accepts.
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;
/// Largest decompressed size a reader accepts from a zstd frame.
pub const MAX_DECOMPRESSED_BYTES: u64 = 16 * 1024 * 1024 * 1024;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

// ---------------------------------------------------------------- CRC32C

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC32C (Castagnoli) of `data`.
#[must_use]
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

fn crc_hex(c: u32) -> String {
    format!("{c:08x}")
}

// ---------------------------------------------------------------- canonical JSON

/// Python's `repr(float)` of a finite `x`.
#[must_use]
pub fn py_float_repr(x: f64) -> String {
    let e = format!("{x:e}"); // shortest round-trip digits: "-1.25e-7"
    let (mant, exp) = e.split_once('e').expect("LowerExp has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (sign, mant) = mant.strip_prefix('-').map_or(("", mant), |m| ("-", m));
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        if exp >= 0 {
            if n <= exp + 1 {
                format!("{sign}{digits}{}.0", "0".repeat((exp + 1 - n) as usize))
            } else {
                let (a, b) = digits.split_at((exp + 1) as usize);
                format!("{sign}{a}.{b}")
            }
        } else {
            format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let (a, b) = digits.split_at(1);
        let frac = if b.is_empty() {
            String::new()
        } else {
            format!(".{b}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{a}{frac}e{esign}{:02}", exp.abs())
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(ch),
            _ => {
                let mut buf = [0u16; 2];
                for unit in ch.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

fn write_json(out: &mut String, v: &Value) -> Result<(), EngineError> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if !f.is_finite() {
                    return Err(EngineError::InvalidConfig {
                        field: "metadata".into(),
                        allowed: "finite numbers".into(),
                        got: f.to_string(),
                    });
                }
                out.push_str(&py_float_repr(f));
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, x)?;
            }
            out.push(']');
        }
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(out, k);
                out.push(':');
                write_json(out, &o[k])?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// The canonical JSON text of `v` (section 4 of the spec).
///
/// # Errors
/// [`EngineError::InvalidConfig`] for a non-finite float.
pub fn canonical_json(v: &Value) -> Result<String, EngineError> {
    let mut s = String::new();
    write_json(&mut s, v)?;
    Ok(s)
}

// ---------------------------------------------------------------- tensors and trees

/// A tensor element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// One byte, 0 or 1.
    Bool,
    /// u8.
    U8,
    /// i8.
    I8,
    /// u16.
    U16,
    /// i16.
    I16,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// u32.
    U32,
    /// i32.
    I32,
    /// f32.
    F32,
    /// u64.
    U64,
    /// i64.
    I64,
    /// f64.
    F64,
}

const DTYPES: [(DType, &str, usize); 13] = [
    (DType::Bool, "BOOL", 1),
    (DType::U8, "U8", 1),
    (DType::I8, "I8", 1),
    (DType::U16, "U16", 2),
    (DType::I16, "I16", 2),
    (DType::F16, "F16", 2),
    (DType::BF16, "BF16", 2),
    (DType::U32, "U32", 4),
    (DType::I32, "I32", 4),
    (DType::F32, "F32", 4),
    (DType::U64, "U64", 8),
    (DType::I64, "I64", 8),
    (DType::F64, "F64", 8),
];

impl DType {
    /// The safetensors code (`F32`).
    #[must_use]
    pub fn code(self) -> &'static str {
        DTYPES.iter().find(|d| d.0 == self).map_or("?", |d| d.1)
    }

    /// Bytes per element.
    #[must_use]
    pub fn itemsize(self) -> usize {
        DTYPES.iter().find(|d| d.0 == self).map_or(1, |d| d.2)
    }

    /// The dtype for a code.
    #[must_use]
    pub fn from_code(code: &str) -> Option<DType> {
        DTYPES.iter().find(|d| d.1 == code).map(|d| d.0)
    }
}

/// An array: element type, shape and little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Element type.
    pub dtype: DType,
    /// Shape (empty for 0-d).
    pub shape: Vec<usize>,
    /// Raw little-endian bytes, C order.
    pub data: Vec<u8>,
}

impl Tensor {
    /// An F32 tensor.
    #[must_use]
    pub fn f32(shape: Vec<usize>, values: &[f32]) -> Tensor {
        Tensor {
            dtype: DType::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// An I8 tensor.
    #[must_use]
    pub fn i8(shape: Vec<usize>, values: &[i8]) -> Tensor {
        Tensor {
            dtype: DType::I8,
            shape,
            data: values.iter().map(|&v| v as u8).collect(),
        }
    }

    /// The values of an F32 tensor.
    ///
    /// # Errors
    /// [`EngineError::CorruptCheckpoint`] naming `what` when it is not F32.
    pub fn as_f32(&self, what: &str) -> Result<Vec<f32>, EngineError> {
        if self.dtype != DType::F32 {
            return Err(EngineError::CorruptCheckpoint(format!(
                "{what}: expected F32, found {}",
                self.dtype.code()
            )));
        }
        Ok(self
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

/// A node of a saved tree (section 5).
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// `None`.
    Null,
    /// A dict with string keys.
    Dict(BTreeMap<String, Node>),
    /// A list.
    List(Vec<Node>),
    /// A tuple.
    Tuple(Vec<Node>),
    /// A named tuple.
    NamedTuple {
        /// Type name.
        name: String,
        /// Field names.
        fields: Vec<String>,
        /// Values, one per field.
        values: Vec<Node>,
    },
    /// An array.
    Tensor(Tensor),
    /// A Python float (a 0-d F64 tensor in the file).
    Float(f64),
    /// A Python int in the i64 range.
    Int(i64),
    /// A Python bool.
    Bool(bool),
    /// A Python str.
    Str(String),
}

impl Node {
    /// A dict node from pairs.
    #[must_use]
    pub fn dict<I: IntoIterator<Item = (&'static str, Node)>>(items: I) -> Node {
        Node::Dict(items.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    /// The child of a dict node.
    ///
    /// # Errors
    /// [`EngineError::CorruptCheckpoint`] when this is not a dict or has no such key.
    pub fn get(&self, key: &str) -> Result<&Node, EngineError> {
        match self {
            Node::Dict(d) => d.get(key).ok_or_else(|| {
                EngineError::CorruptCheckpoint(format!("tree: missing key {key:?}"))
            }),
            _ => Err(EngineError::CorruptCheckpoint(format!(
                "tree: expected a dict holding {key:?}"
            ))),
        }
    }

    /// This node as an int.
    ///
    /// # Errors
    /// [`EngineError::CorruptCheckpoint`] naming `what` otherwise.
    pub fn as_int(&self, what: &str) -> Result<i64, EngineError> {
        match self {
            Node::Int(i) => Ok(*i),
            _ => Err(EngineError::CorruptCheckpoint(format!(
                "{what}: expected an int"
            ))),
        }
    }

    /// This node as a tensor.
    ///
    /// # Errors
    /// [`EngineError::CorruptCheckpoint`] naming `what` otherwise.
    pub fn as_tensor(&self, what: &str) -> Result<&Tensor, EngineError> {
        match self {
            Node::Tensor(t) => Ok(t),
            _ => Err(EngineError::CorruptCheckpoint(format!(
                "{what}: expected a tensor"
            ))),
        }
    }
}

fn escape_key(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

fn name_of(path: &[String]) -> String {
    if path.is_empty() {
        "_".into()
    } else {
        path.join("/")
    }
}

fn flatten(node: &Node, path: &mut Vec<String>, out: &mut Vec<(String, Tensor)>) -> Value {
    let one = |kind: &str, v: Value| {
        let mut m = Map::new();
        m.insert(kind.to_owned(), v);
        Value::Object(m)
    };
    match node {
        Node::Null => Value::Null,
        Node::Dict(d) => {
            let mut m = Map::new();
            for (k, v) in d {
                path.push(escape_key(k));
                m.insert(k.clone(), flatten(v, path, out));
                path.pop();
            }
            one("dict", Value::Object(m))
        }
        Node::List(items) | Node::Tuple(items) => {
            let mut a = Vec::new();
            for (i, v) in items.iter().enumerate() {
                path.push(i.to_string());
                a.push(flatten(v, path, out));
                path.pop();
            }
            one(
                if matches!(node, Node::List(_)) {
                    "list"
                } else {
                    "tuple"
                },
                Value::Array(a),
            )
        }
        Node::NamedTuple {
            name,
            fields,
            values,
        } => {
            let mut a = Vec::new();
            for (f, v) in fields.iter().zip(values) {
                path.push(f.clone());
                a.push(flatten(v, path, out));
                path.pop();
            }
            let mut m = Map::new();
            m.insert(
                "fields".into(),
                Value::Array(fields.iter().map(|f| Value::String(f.clone())).collect()),
            );
            m.insert("name".into(), Value::String(name.clone()));
            m.insert("values".into(), Value::Array(a));
            one("namedtuple", Value::Object(m))
        }
        Node::Tensor(t) => {
            let n = name_of(path);
            out.push((n.clone(), t.clone()));
            one("tensor", Value::String(n))
        }
        Node::Float(f) => {
            let n = name_of(path);
            out.push((
                n.clone(),
                Tensor {
                    dtype: DType::F64,
                    shape: vec![],
                    data: f.to_le_bytes().to_vec(),
                },
            ));
            one("float", Value::String(n))
        }
        Node::Int(i) => one("int", Value::from(*i)),
        Node::Bool(b) => one("bool", Value::Bool(*b)),
        Node::Str(s) => one("str", Value::String(s.clone())),
    }
}

fn corrupt(msg: String) -> EngineError {
    EngineError::CorruptCheckpoint(msg)
}

// ---------------------------------------------------------------- encode / decode

/// The bytes of an uncompressed checkpoint of `tree` with the caller's `metadata` (a JSON object).
///
/// # Errors
/// [`EngineError::InvalidConfig`] when `metadata` is not an object, holds a
/// non-finite float, or a tensor's byte length does not match its shape.
pub fn encode(tree: &Node, metadata: &Value) -> Result<Vec<u8>, EngineError> {
    if !metadata.is_object() {
        return Err(EngineError::config(
            "metadata",
            "a JSON object",
            "another JSON value",
        ));
    }
    let mut tensors = Vec::new();
    let tree_json = flatten(tree, &mut Vec::new(), &mut tensors);
    for (name, t) in &tensors {
        let expect = t.shape.iter().product::<usize>() * t.dtype.itemsize();
        if expect != t.data.len() {
            return Err(EngineError::config(
                name,
                &format!("{expect} bytes for shape {:?}", t.shape),
                t.data.len(),
            ));
        }
    }
    tensors.sort_by(|a, b| {
        b.1.dtype
            .itemsize()
            .cmp(&a.1.dtype.itemsize())
            .then_with(|| a.0.cmp(&b.0))
    });
    let mut header = Map::new();
    let mut crcs = Map::new();
    let mut off = 0usize;
    for (name, t) in &tensors {
        let mut e = Map::new();
        e.insert(
            "data_offsets".into(),
            Value::from(vec![off as u64, (off + t.data.len()) as u64]),
        );
        e.insert("dtype".into(), Value::from(t.dtype.code()));
        e.insert(
            "shape".into(),
            Value::from(t.shape.iter().map(|&s| s as u64).collect::<Vec<_>>()),
        );
        header.insert(name.clone(), Value::Object(e));
        crcs.insert(name.clone(), Value::from(crc_hex(crc32c(&t.data))));
        off += t.data.len();
    }
    let mut md = Map::new();
    md.insert("trainsvc.format".into(), Value::from(FORMAT_NAME));
    md.insert(
        "trainsvc.format_version".into(),
        Value::from(FORMAT_VERSION),
    );
    md.insert(
        "trainsvc.tree".into(),
        Value::from(canonical_json(&tree_json)?),
    );
    md.insert(
        "trainsvc.metadata".into(),
        Value::from(canonical_json(metadata)?),
    );
    md.insert(
        "trainsvc.crc32c".into(),
        Value::from(canonical_json(&Value::Object(crcs))?),
    );
    header.insert("__metadata__".into(), Value::Object(md));
    let hcrc = crc32c(canonical_json(&Value::Object(header.clone()))?.as_bytes());
    if let Some(Value::Object(md)) = header.get_mut("__metadata__") {
        md.insert("trainsvc.header_crc32c".into(), Value::from(crc_hex(hcrc)));
    }
    let mut text = canonical_json(&Value::Object(header))?.into_bytes();
    while (8 + text.len()) % 8 != 0 {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + off);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    for (_, t) in &tensors {
        out.extend_from_slice(&t.data);
    }
    Ok(out)
}

/// What a decoded checkpoint holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// The tree (a flat dict of tensors for a foreign safetensors file).
    pub tree: Node,
    /// The caller's metadata (the raw `__metadata__` for a foreign file).
    pub metadata: Value,
    /// Whether the file was not written by trainsvc.
    pub foreign: bool,
}

fn decompress(bytes: &[u8]) -> Result<Vec<u8>, EngineError> {
    let size = zstd::zstd_safe::get_frame_content_size(bytes)
        .map_err(|_| corrupt("zstd frame: unreadable frame header".into()))?
        .ok_or_else(|| corrupt("zstd frame: content size not declared".into()))?;
    if size > MAX_DECOMPRESSED_BYTES {
        return Err(corrupt(format!(
            "zstd frame: declares {size} bytes, more than the limit {MAX_DECOMPRESSED_BYTES}"
        )));
    }
    zstd::bulk::decompress(bytes, size as usize).map_err(|e| corrupt(format!("zstd frame: {e}")))
}

fn compress(bytes: &[u8]) -> Result<Vec<u8>, EngineError> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3)?;
    enc.include_checksum(true)?;
    enc.include_contentsize(true)?;
    enc.set_pledged_src_size(Some(bytes.len() as u64))?;
    enc.write_all(bytes)?;
    Ok(enc.finish()?)
}

fn node_from_tree(
    desc: &Value,
    tensors: &mut BTreeMap<String, Tensor>,
    path: &mut Vec<String>,
) -> Result<Node, EngineError> {
    let here = || {
        if path.is_empty() {
            "<root>".to_string()
        } else {
            path.join("/")
        }
    };
    let bad = |what: &str| corrupt(format!("trainsvc.tree at {}: {what}", here()));
    let Value::Object(m) = desc else {
        return if desc.is_null() {
            Ok(Node::Null)
        } else {
            Err(bad("expected an object or null"))
        };
    };
    let (kind, v) = m
        .iter()
        .next()
        .filter(|_| m.len() == 1)
        .ok_or_else(|| bad("expected one key"))?;
    let mut take = |dtype: Option<DType>| -> Result<Tensor, EngineError> {
        let name = v
            .as_str()
            .ok_or_else(|| bad("tensor name must be a string"))?;
        let t = tensors
            .remove(name)
            .ok_or_else(|| corrupt(format!("tensor {name}: named by the tree but missing")))?;
        if name != name_of(path) {
            return Err(corrupt(format!(
                "tensor {name}: expected the name {}",
                name_of(path)
            )));
        }
        if let Some(d) = dtype {
            if t.dtype != d || !t.shape.is_empty() {
                return Err(corrupt(format!(
                    "tensor {name}: expected a 0-d {}",
                    d.code()
                )));
            }
        }
        Ok(t)
    };
    Ok(match kind.as_str() {
        "tensor" => Node::Tensor(take(None)?),
        "float" => {
            let t = take(Some(DType::F64))?;
            Node::Float(f64::from_le_bytes(t.data[..8].try_into().expect("8 bytes")))
        }
        "int" => Node::Int(v.as_i64().ok_or_else(|| bad("int out of range"))?),
        "bool" => Node::Bool(v.as_bool().ok_or_else(|| bad("expected a bool"))?),
        "str" => Node::Str(
            v.as_str()
                .ok_or_else(|| bad("expected a string"))?
                .to_owned(),
        ),
        "dict" => {
            let o = v.as_object().ok_or_else(|| bad("expected an object"))?;
            let mut d = BTreeMap::new();
            for (k, x) in o {
                path.push(escape_key(k));
                d.insert(k.clone(), node_from_tree(x, tensors, path)?);
                path.pop();
            }
            Node::Dict(d)
        }
        "list" | "tuple" => {
            let a = v.as_array().ok_or_else(|| bad("expected an array"))?;
            let mut items = Vec::new();
            for (i, x) in a.iter().enumerate() {
                path.push(i.to_string());
                items.push(node_from_tree(x, tensors, path)?);
                path.pop();
            }
            if kind == "list" {
                Node::List(items)
            } else {
                Node::Tuple(items)
            }
        }
        "namedtuple" => {
            let name = v
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("namedtuple without a name"))?;
            let fields: Vec<String> = v
                .get("fields")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("namedtuple without fields"))?
                .iter()
                .map(|f| {
                    f.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad("field names must be strings"))
                })
                .collect::<Result<_, _>>()?;
            let vals = v
                .get("values")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("namedtuple without values"))?;
            if vals.len() != fields.len() {
                return Err(bad("namedtuple values and fields differ in length"));
            }
            let mut values = Vec::new();
            for (f, x) in fields.iter().zip(vals) {
                path.push(f.clone());
                values.push(node_from_tree(x, tensors, path)?);
                path.pop();
            }
            Node::NamedTuple {
                name: name.to_owned(),
                fields,
                values,
            }
        }
        other => return Err(bad(&format!("unknown node kind {other:?}"))),
    })
}

fn parse_canonical(text: &str, field: &str) -> Result<Value, EngineError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| corrupt(format!("{field}: invalid JSON: {e}")))?;
    if canonical_json(&v)? != text {
        return Err(corrupt(format!("{field}: not in canonical form")));
    }
    Ok(v)
}

/// Reads checkpoint bytes (zstd-compressed or not), checking everything the spec lists.
///
/// # Errors
/// [`EngineError::CorruptCheckpoint`] naming the header field or tensor that
/// fails a check; [`EngineError::IncompatibleVersion`] for an unknown version.
pub fn decode(bytes: &[u8]) -> Result<Decoded, EngineError> {
    if bytes.starts_with(&ZSTD_MAGIC) {
        return decode(&decompress(bytes)?);
    }
    if bytes.len() < 8 {
        return Err(corrupt(format!(
            "header length: expected 8 bytes, found a {}-byte file",
            bytes.len()
        )));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER_BYTES || 8 + n > bytes.len() as u64 {
        return Err(corrupt(format!(
            "header length: {n} is more than the limit or the file ({} bytes)",
            bytes.len()
        )));
    }
    let raw = &bytes[8..8 + n as usize];
    let text = std::str::from_utf8(raw).map_err(|_| corrupt("header: not UTF-8".into()))?;
    let trimmed = text.trim_end_matches(' ');
    let header: Value =
        serde_json::from_str(trimmed).map_err(|e| corrupt(format!("header: invalid JSON: {e}")))?;
    let Value::Object(mut obj) = header else {
        return Err(corrupt("header: expected a JSON object".into()));
    };
    let md = match obj.remove("__metadata__") {
        Some(Value::Object(m)) => m,
        None => Map::new(),
        Some(_) => return Err(corrupt("__metadata__: expected an object".into())),
    };
    // A file with any trainsvc key is checked as one (a damaged key must not make it "foreign").
    let foreign = !md
        .keys()
        .any(|k| k.to_ascii_lowercase().starts_with("trainsvc"));
    let data = &bytes[8 + n as usize..];
    if !foreign {
        let version = md
            .get("trainsvc.format_version")
            .and_then(Value::as_str)
            .unwrap_or("<missing>");
        if version != FORMAT_VERSION {
            return Err(EngineError::IncompatibleVersion(format!(
                "trainsvc.format_version: found {version}, this reader supports {FORMAT_VERSION}"
            )));
        }
        let mut full = obj.clone();
        full.insert("__metadata__".into(), Value::Object(md.clone()));
        if canonical_json(&Value::Object(full.clone()))? != trimmed {
            return Err(corrupt(
                "header: not in canonical form (a byte was changed)".into(),
            ));
        }
        let stored = md
            .get("trainsvc.header_crc32c")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if let Some(Value::Object(m)) = full.get_mut("__metadata__") {
            m.remove("trainsvc.header_crc32c");
        }
        let found = crc_hex(crc32c(canonical_json(&Value::Object(full))?.as_bytes()));
        if stored != found {
            return Err(corrupt(format!(
                "trainsvc.header_crc32c: expected {stored}, found {found}"
            )));
        }
        let allowed = [
            "trainsvc.format",
            "trainsvc.format_version",
            "trainsvc.tree",
            "trainsvc.metadata",
            "trainsvc.crc32c",
            "trainsvc.header_crc32c",
        ];
        if let Some(k) = md.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(corrupt(format!("__metadata__: unexpected key {k:?}")));
        }
    }
    // Entries: dtype, shape, contiguous offsets, all before allocating.
    let mut entries: Vec<(String, DType, Vec<usize>, u64, u64)> = Vec::new();
    for (name, e) in &obj {
        let field = |k: &str| {
            e.get(k)
                .ok_or_else(|| corrupt(format!("tensor {name}: missing {k}")))
        };
        let code = field("dtype")?.as_str().unwrap_or("");
        let dtype = DType::from_code(code)
            .ok_or_else(|| corrupt(format!("tensor {name}: unknown dtype {code:?}")))?;
        let shape: Vec<usize> = field("shape")?
            .as_array()
            .ok_or_else(|| corrupt(format!("tensor {name}: shape must be a list")))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .map(|d| d as usize)
                    .ok_or_else(|| corrupt(format!("tensor {name}: bad shape")))
            })
            .collect::<Result<_, _>>()?;
        let offs = field("data_offsets")?.as_array().filter(|a| a.len() == 2);
        let (b, en) = match offs.map(|a| (a[0].as_u64(), a[1].as_u64())) {
            Some((Some(b), Some(en))) if b <= en => (b, en),
            _ => return Err(corrupt(format!("tensor {name}: bad data_offsets"))),
        };
        let mut size: u64 = dtype.itemsize() as u64;
        for &d in &shape {
            size = size
                .checked_mul(d as u64)
                .ok_or_else(|| corrupt(format!("tensor {name}: shape too large")))?;
        }
        if size != en - b {
            return Err(corrupt(format!(
                "tensor {name}: expected {size} bytes for its shape, offsets hold {}",
                en - b
            )));
        }
        entries.push((name.clone(), dtype, shape, b, en));
    }
    entries.sort_by_key(|e| (e.3, e.4));
    let mut pos = 0;
    for e in &entries {
        if e.3 != pos {
            return Err(corrupt(format!(
                "tensor {}: expected to start at {pos}, starts at {}",
                e.0, e.3
            )));
        }
        pos = e.4;
    }
    if pos != data.len() as u64 {
        return Err(corrupt(format!(
            "data section: expected {pos} bytes, found {}",
            data.len()
        )));
    }
    let crcs = if foreign {
        Map::new()
    } else {
        let text = md
            .get("trainsvc.crc32c")
            .and_then(Value::as_str)
            .unwrap_or("");
        match parse_canonical(text, "trainsvc.crc32c")? {
            Value::Object(m) => m,
            _ => return Err(corrupt("trainsvc.crc32c: expected an object".into())),
        }
    };
    let mut tensors = BTreeMap::new();
    for (name, dtype, shape, b, en) in entries {
        let bytes = &data[b as usize..en as usize];
        if !foreign {
            let expected = crcs
                .get(&name)
                .and_then(Value::as_str)
                .unwrap_or("<missing>");
            let found = crc_hex(crc32c(bytes));
            if expected != found {
                return Err(corrupt(format!(
                    "tensor {name}: CRC32C expected {expected}, found {found}"
                )));
            }
        }
        tensors.insert(
            name,
            Tensor {
                dtype,
                shape,
                data: bytes.to_vec(),
            },
        );
    }
    if foreign {
        let metadata = Value::Object(md);
        return Ok(Decoded {
            tree: Node::Dict(
                tensors
                    .into_iter()
                    .map(|(k, t)| (k, Node::Tensor(t)))
                    .collect(),
            ),
            metadata,
            foreign,
        });
    }
    let tree_text = md
        .get("trainsvc.tree")
        .and_then(Value::as_str)
        .unwrap_or("");
    let tree_desc = parse_canonical(tree_text, "trainsvc.tree")?;
    let meta_text = md
        .get("trainsvc.metadata")
        .and_then(Value::as_str)
        .unwrap_or("");
    let metadata = parse_canonical(meta_text, "trainsvc.metadata")?;
    let tree = node_from_tree(&tree_desc, &mut tensors, &mut Vec::new())?;
    if let Some(name) = tensors.keys().next() {
        return Err(corrupt(format!("tensor {name}: not named by the tree")));
    }
    Ok(Decoded {
        tree,
        metadata,
        foreign,
    })
}

// ---------------------------------------------------------------- files

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), EngineError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the directory).
///
/// # Errors
/// [`EngineError::Io`] on any I/O failure; the final name is then untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let base = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = dir.join(format!(".tmp-{base}-{}-{nanos}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Saves `tree` and `metadata` to `path` atomically; zstd-compressed when `compress`.
///
/// # Errors
/// As [`encode`] and [`write_atomic`].
pub fn save(
    path: &Path,
    tree: &Node,
    metadata: &Value,
    compress_it: bool,
) -> Result<u64, EngineError> {
    let mut bytes = encode(tree, metadata)?;
    if compress_it {
        bytes = compress(&bytes)?;
    }
    write_atomic(path, &bytes)?;
    Ok(bytes.len() as u64)
}

/// Loads and checks the checkpoint at `path`.
///
/// # Errors
/// [`EngineError::CheckpointNotFound`] when there is no such file; as [`decode`] otherwise.
pub fn load(path: &Path) -> Result<Decoded, EngineError> {
    let bytes = fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            EngineError::CheckpointNotFound(format!("{}: no such file", path.display()))
        }
        _ => EngineError::Io(format!("{}: {e}", path.display())),
    })?;
    decode(&bytes).map_err(|e| match e {
        EngineError::CorruptCheckpoint(m) => {
            EngineError::CorruptCheckpoint(format!("{}: {m}", path.display()))
        }
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn floats_format_like_python_repr() {
        let cases = [
            (1e-5, "1e-05"),
            (1.5e16, "1.5e+16"),
            (1e16, "1e+16"),
            (2.0, "2.0"),
            (0.1, "0.1"),
            (-0.0, "-0.0"),
            (0.0001, "0.0001"),
            (123_456.789, "123456.789"),
            (1e15, "1000000000000000.0"),
            (1e300, "1e+300"),
            (5e-324, "5e-324"),
            (0.001_000_000_047_497_451_3, "0.0010000000474974513"),
            (3.000_000_005_497_755_8e38, "3.0000000054977558e+38"),
        ];
        for (x, s) in cases {
            assert_eq!(py_float_repr(x), s);
        }
    }

    #[test]
    fn strings_escape_like_python() {
        let v = Value::from("a\"\\/\n\u{1}\u{7f}é😀");
        assert_eq!(
            canonical_json(&v).unwrap(),
            r#""a\"\\/\n\u0001\u007f\u00e9\ud83d\ude00""#
        );
    }

    #[test]
    fn round_trip_and_any_flipped_byte_is_detected() {
        let tree = Node::dict([
            (
                "w",
                Node::Tensor(Tensor::f32(vec![2, 2], &[1.0, 2.0, 3.0, 4.0])),
            ),
            ("lr", Node::Float(0.5)),
            ("n", Node::Int(3)),
        ]);
        let bytes = encode(&tree, &serde_json::json!({"a": 1})).unwrap();
        let d = decode(&bytes).unwrap();
        assert_eq!(d.tree, tree);
        for i in (8..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(
                decode(&bad).is_err(),
                "flip at {i} went unnoticed: {:?}",
                String::from_utf8_lossy(&bad[..200])
            );
        }
        let mut short = bytes.clone();
        short.pop();
        assert!(matches!(
            decode(&short),
            Err(EngineError::CorruptCheckpoint(_))
        ));
    }
}
