//! The shared checkpoint test vectors (packages/checkpoint/tests/vectors): every
//! file reads back to its description, and every uncompressed one is
//! reproduced byte for byte by the Rust writer.

use std::path::PathBuf;

use othello_core::checkpoint::{decode, encode, DType, Node, Tensor};
use serde_json::Value;

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../checkpoint/tests/vectors")
}

fn f16_bits(x: f64) -> u16 {
    let sign = if x.is_sign_negative() { 0x8000 } else { 0 };
    let a = x.abs();
    if a == 0.0 {
        return sign;
    }
    let e = ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023;
    if e < -14 {
        sign | (a * 2f64.powi(24)) as u16
    } else {
        let m = ((a / 2f64.powi(e) - 1.0) * 1024.0) as u16;
        sign | (((e + 15) as u16) << 10) | m
    }
}

fn tensor_from(desc: &Value) -> Tensor {
    let dtype = DType::from_code(desc["dtype"].as_str().unwrap()).unwrap();
    let shape: Vec<usize> = desc["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let mut data = Vec::new();
    for v in desc["data"].as_array().unwrap() {
        let f = || v.as_f64().unwrap();
        let i = || v.as_i64().unwrap();
        match dtype {
            DType::Bool => data.push(u8::from(v.as_bool().unwrap())),
            DType::U8 => data.push(v.as_u64().unwrap() as u8),
            DType::I8 => data.push(i() as i8 as u8),
            DType::U16 => data.extend((v.as_u64().unwrap() as u16).to_le_bytes()),
            DType::I16 => data.extend((i() as i16).to_le_bytes()),
            DType::F16 => data.extend(f16_bits(f()).to_le_bytes()),
            DType::BF16 => data.extend((((f() as f32).to_bits() >> 16) as u16).to_le_bytes()),
            DType::U32 => data.extend((v.as_u64().unwrap() as u32).to_le_bytes()),
            DType::I32 => data.extend((i() as i32).to_le_bytes()),
            DType::F32 => data.extend((f() as f32).to_le_bytes()),
            DType::U64 => data.extend(v.as_u64().unwrap().to_le_bytes()),
            DType::I64 => data.extend(i().to_le_bytes()),
            DType::F64 => data.extend(f().to_le_bytes()),
        }
    }
    Tensor { dtype, shape, data }
}

fn node_from(desc: &Value) -> Node {
    if desc.is_null() {
        return Node::Null;
    }
    let (kind, v) = desc.as_object().unwrap().iter().next().unwrap();
    let list = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(node_from)
            .collect::<Vec<_>>()
    };
    match kind.as_str() {
        "tensor" => Node::Tensor(tensor_from(v)),
        "float" => Node::Float(v.as_f64().unwrap()),
        "int" => Node::Int(v.as_i64().unwrap()),
        "bool" => Node::Bool(v.as_bool().unwrap()),
        "str" => Node::Str(v.as_str().unwrap().to_owned()),
        "dict" => Node::Dict(
            v.as_object()
                .unwrap()
                .iter()
                .map(|(k, x)| (k.clone(), node_from(x)))
                .collect(),
        ),
        "list" => Node::List(list(v)),
        "tuple" => Node::Tuple(list(v)),
        "namedtuple" => Node::NamedTuple {
            name: v["name"].as_str().unwrap().to_owned(),
            fields: v["fields"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_owned())
                .collect(),
            values: list(&v["values"]),
        },
        other => panic!("unknown kind {other}"),
    }
}

#[test]
fn every_vector_reads_back_and_uncompressed_ones_are_reproduced_byte_for_byte() {
    let dir = vectors_dir();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    assert!(
        names.len() >= 5,
        "expected the shared vectors in {}",
        dir.display()
    );
    let (mut reproduced, mut read) = (0, 0);
    for desc_path in names {
        let desc: Value =
            serde_json::from_str(&std::fs::read_to_string(&desc_path).unwrap()).unwrap();
        // names.json and retention.json describe names and retention (tested
        // in checkpoint_names.rs), not a file.
        let Some(file) = desc["file"].as_str() else {
            continue;
        };
        let file = dir.join(file);
        let bytes = std::fs::read(&file).unwrap();
        let expected_tree = node_from(&desc["tree"]);
        let decoded = decode(&bytes).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(decoded.tree, expected_tree, "{}", file.display());
        assert_eq!(decoded.metadata, desc["metadata"], "{}", file.display());
        read += 1;
        if desc["compression"].is_null() {
            let ours = encode(&expected_tree, &desc["metadata"]).unwrap();
            assert!(
                ours == bytes,
                "{}: the Rust writer's bytes differ",
                file.display()
            );
            reproduced += 1;
        }
    }
    assert!(
        reproduced >= 5 && read > reproduced,
        "read {read}, reproduced {reproduced}"
    );
}
