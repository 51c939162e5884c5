//! Tensors, their element types and the saved tree (section 5 of the spec).

use super::*;

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

pub(crate) const DTYPES: [(DType, &str, usize); 13] = [
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

    /// An F64 tensor.
    #[must_use]
    pub fn f64(shape: Vec<usize>, values: &[f64]) -> Tensor {
        Tensor {
            dtype: DType::F64,
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

impl Tensor {
    /// The values of an F64 tensor.
    ///
    /// # Errors
    /// [`EngineError::CorruptCheckpoint`] naming `what` when it is not F64.
    pub fn as_f64(&self, what: &str) -> Result<Vec<f64>, EngineError> {
        if self.dtype != DType::F64 {
            return Err(EngineError::CorruptCheckpoint(format!(
                "{what}: expected F64, found {}",
                self.dtype.code()
            )));
        }
        Ok(self
            .data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
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

pub(crate) fn escape_key(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

pub(crate) fn name_of(path: &[String]) -> String {
    if path.is_empty() {
        "_".into()
    } else {
        path.join("/")
    }
}

pub(crate) fn flatten(
    node: &Node,
    path: &mut Vec<String>,
    out: &mut Vec<(String, Tensor)>,
) -> Value {
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

pub(crate) fn corrupt(msg: String) -> EngineError {
    EngineError::CorruptCheckpoint(msg)
}
