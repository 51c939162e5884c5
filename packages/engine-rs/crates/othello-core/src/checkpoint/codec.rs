//! Encoding and decoding a checkpoint's bytes, zstd included (sections 6 and 7 of the spec).

use super::*;

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

pub(crate) fn decompress(bytes: &[u8]) -> Result<Vec<u8>, EngineError> {
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

pub(crate) fn compress(bytes: &[u8]) -> Result<Vec<u8>, EngineError> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3)?;
    enc.include_checksum(true)?;
    enc.include_contentsize(true)?;
    enc.set_pledged_src_size(Some(bytes.len() as u64))?;
    enc.write_all(bytes)?;
    Ok(enc.finish()?)
}

pub(crate) fn node_from_tree(
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

pub(crate) fn parse_canonical(text: &str, field: &str) -> Result<Value, EngineError> {
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
