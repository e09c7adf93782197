//! The ONNX loader against bad input: the malformed corpus in tests/onnx-malformed/ (made by
//! scripts/onnx/make_malformed.py), external-data escapes that git cannot hold (symlinks, hard links, FIFOs,
//! made here in a temporary folder), and the valid models whose initializer ranges must point at the right
//! bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;
use qc::import::onnx::load::load_model;
use qc::import::onnx::model::{AttrValue, DataType, Dim, OnnxModel, Tensor, TensorData};
use qc::import::onnx::proto;
use qc_ir::diag::{Diagnostic, Location};

/// A bound on a hang, not a benchmark.
const LIMIT: Duration = Duration::from_secs(1);

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/onnx-malformed")
}

/// Names, sizes and modification times of everything under `dir`.
fn listing(dir: &Path) -> BTreeMap<PathBuf, (u64, Option<std::time::SystemTime>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            }
            out.insert(e.path(), (meta.len(), meta.modified().ok()));
        }
    }
    out
}

fn load_timed(path: &Path) -> (Result<OnnxModel, Diagnostic>, Duration) {
    let t = Instant::now();
    let r = load_model(path);
    (r, t.elapsed())
}

fn model_path(d: &Diagnostic) -> Option<(&str, &str)> {
    match &d.loc {
        Location::Model { file, path } => Some((file, path)),
        _ => None,
    }
}

#[test]
fn malformed_corpus_is_rejected_with_located_diagnostics() {
    let dir = corpus();
    let expected = std::fs::read_to_string(dir.join("expected.tsv")).expect("expected.tsv");
    let before = listing(&dir);
    let mut listed = Vec::new();
    let mut failures = Vec::new();
    let mut slowest = (Duration::ZERO, String::new());
    for line in expected
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 3, "bad expected.tsv line {line:?}");
        let (name, want_path, want_msg) = (cols[0], cols[1], cols[2]);
        listed.push(name.to_string());
        let path = dir.join(name);
        let (r, took) = load_timed(&path);
        if took > slowest.0 {
            slowest = (took, name.to_string());
        }
        if took > LIMIT {
            failures.push(format!("{name}: took {took:?} (limit {LIMIT:?})"));
        }
        let d = match r {
            Ok(_) => {
                failures.push(format!("{name}: loaded, but must be rejected"));
                continue;
            }
            Err(d) => d,
        };
        if std::env::var_os("ONNX_CORPUS_VERBOSE").is_some() {
            eprintln!("{d}");
        }
        let Some((file, fpath)) = model_path(&d) else {
            failures.push(format!("{name}: diagnostic without a model location: {d}"));
            continue;
        };
        let shown = path.display().to_string();
        if file != shown {
            failures.push(format!(
                "{name}: diagnostic names file {file:?}, expected {shown:?}"
            ));
        }
        let path_ok = if want_path == "*" {
            !fpath.is_empty()
        } else if let Some(prefix) = want_path.strip_suffix('*') {
            fpath.starts_with(prefix)
        } else {
            fpath == want_path
        };
        if !path_ok {
            failures.push(format!(
                "{name}: path {fpath:?}, expected {want_path:?} ({d})"
            ));
        }
        if !d.message.contains(want_msg) {
            failures.push(format!(
                "{name}: message {:?} lacks {want_msg:?}",
                d.message
            ));
        }
        let rendered = d.to_string();
        if !rendered.contains(&shown) || !rendered.contains(fpath) {
            failures.push(format!(
                "{name}: rendered diagnostic lacks file or path: {rendered}"
            ));
        }
    }
    // Every model in the folder is listed, and there are enough of them.
    for e in std::fs::read_dir(&dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        if n.ends_with(".onnx") && !listed.contains(&n) {
            failures.push(format!("{n}: not listed in expected.tsv"));
        }
    }
    assert!(
        listed.len() >= 100,
        "only {} malformed models",
        listed.len()
    );
    assert_eq!(
        before,
        listing(&dir),
        "loading wrote into the corpus folder"
    );
    eprintln!(
        "{} malformed models rejected; slowest {:?} ({})",
        listed.len(),
        slowest.0,
        slowest.1
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ------------------------------------------------------------------ escapes made in a temporary folder

/// A model whose only initializer `W` (FLOAT [4]) lives in external data at `location`.
fn ext_model(location: &str) -> Vec<u8> {
    let entry = |k: &str, v: &str| proto::StringStringEntryProto {
        key: k.into(),
        value: v.into(),
    };
    let tensor_type = |dims: &[i64]| proto::TypeProto {
        value: Some(proto::type_proto::Value::TensorType(
            proto::type_proto::Tensor {
                elem_type: 1,
                shape: Some(proto::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| proto::tensor_shape_proto::Dimension {
                            value: Some(proto::tensor_shape_proto::DimValue::DimValue(d)),
                            denotation: String::new(),
                        })
                        .collect(),
                }),
            },
        )),
        denotation: String::new(),
    };
    let vi = |name: &str| proto::ValueInfoProto {
        name: name.into(),
        r#type: Some(tensor_type(&[4])),
        doc_string: String::new(),
    };
    let m = proto::ModelProto {
        ir_version: 10,
        opset_import: vec![proto::OperatorSetIdProto {
            domain: String::new(),
            version: 21,
        }],
        graph: Some(proto::GraphProto {
            node: vec![proto::NodeProto {
                input: vec!["X".into(), "W".into()],
                output: vec!["Y".into()],
                op_type: "Add".into(),
                ..Default::default()
            }],
            initializer: vec![proto::TensorProto {
                name: "W".into(),
                dims: vec![4],
                data_type: 1,
                data_location: 1,
                external_data: vec![entry("location", location), entry("length", "16")],
                ..Default::default()
            }],
            input: vec![vi("X")],
            output: vec![vi("Y")],
            ..Default::default()
        }),
        ..Default::default()
    };
    m.encode_to_vec()
}

const LOC: &str = "graph.initializer[0].external_data[\"location\"]";

/// Writes the model into `dir`, loads it (timed), checks that nothing was written.
fn load_in(dir: &Path, location: &str) -> Result<OnnxModel, Diagnostic> {
    let model = dir.join("model.onnx");
    std::fs::write(&model, ext_model(location)).unwrap();
    let before = listing(dir);
    let (r, took) = load_timed(&model);
    assert!(took < LIMIT, "{location}: took {took:?}");
    assert_eq!(before, listing(dir), "{location}: loading wrote something");
    r
}

fn expect_reject(dir: &Path, location: &str, what: &str) {
    match load_in(dir, location) {
        Ok(_) => panic!("{location}: loaded, but it must be rejected ({what})"),
        Err(d) => {
            let (file, path) = model_path(&d).expect("model location");
            assert!(file.ends_with("model.onnx"), "{d}");
            assert_eq!(path, LOC, "{d}");
            assert!(d.message.contains(what), "{location}: {d}");
        }
    }
}

#[cfg(unix)]
#[test]
fn external_data_escapes_are_rejected() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(dir.join("real")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let bytes: Vec<u8> = (0..16).collect();
    std::fs::write(dir.join("w.bin"), &bytes).unwrap();
    std::fs::write(dir.join("real/w.bin"), &bytes).unwrap();
    std::fs::write(outside.join("secret.bin"), &bytes).unwrap();

    // Controls: a plain file, also in a subfolder, loads.
    let m = load_in(&dir, "w.bin").expect("plain external data loads");
    match &m.initializers[0].data {
        TensorData::Raw(r) => assert_eq!(r.bytes(), &bytes[..]),
        other => panic!("{other:?}"),
    }
    load_in(&dir, "real/w.bin").expect("external data in a subfolder loads");

    // Symlink as the last component: inside the folder, and pointing outside.
    symlink("w.bin", dir.join("link.bin")).unwrap();
    expect_reject(&dir, "link.bin", "symbolic link");
    symlink(outside.join("secret.bin"), dir.join("escape.bin")).unwrap();
    expect_reject(&dir, "escape.bin", "symbolic link");
    // Symlink as a parent component.
    symlink("real", dir.join("linkdir")).unwrap();
    expect_reject(
        &dir,
        "linkdir/w.bin",
        "parent component \"linkdir\" is a symbolic link",
    );
    symlink(&outside, dir.join("out")).unwrap();
    expect_reject(&dir, "out/secret.bin", "symbolic link");
    std::fs::create_dir_all(dir.join("deep")).unwrap();
    symlink(&outside, dir.join("deep/out")).unwrap();
    expect_reject(&dir, "deep/out/secret.bin", "parent component \"deep/out\"");
    // Hard links: the file inside the folder has a second name (here: outside it).
    std::fs::hard_link(outside.join("secret.bin"), dir.join("hard.bin")).unwrap();
    expect_reject(&dir, "hard.bin", "hard links");
    // A FIFO must be refused without blocking.
    let fifo = dir.join("fifo.bin");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: plain libc call with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    expect_reject(&dir, "fifo.bin", "FIFO");
    // A Unix socket is not a regular file either.
    let _sock = std::os::unix::net::UnixListener::bind(dir.join("sock.bin")).unwrap();
    expect_reject(&dir, "sock.bin", "socket");
    // A device, by an absolute path and through a symlink.
    expect_reject(&dir, "/dev/zero", "absolute");
    symlink("/dev/zero", dir.join("zero.bin")).unwrap();
    expect_reject(&dir, "zero.bin", "symbolic link");
    // Escapes by path.
    expect_reject(&dir, "../outside/secret.bin", "'..'");
    expect_reject(
        &dir,
        &outside.join("secret.bin").display().to_string(),
        "absolute",
    );
}

#[cfg(unix)]
#[test]
fn model_file_that_is_not_regular_is_refused_quickly() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("m.onnx");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: plain libc call with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (r, took) = load_timed(&fifo);
    assert!(took < LIMIT);
    let d = r.expect_err("a FIFO is not a model");
    assert!(d.message.contains("not a regular file"), "{d}");
    let (r, _) = load_timed(tmp.path());
    assert!(r.is_err());
    let (r, _) = load_timed(&tmp.path().join("missing.onnx"));
    assert!(r.expect_err("missing").message.contains("cannot open"));
}

// ------------------------------------------------------------------ valid models

fn find_tensor<'a>(m: &'a OnnxModel, name: &str) -> Option<&'a Tensor> {
    m.initializer(name).or_else(|| {
        m.nodes
            .iter()
            .flat_map(|n| &n.attributes)
            .find_map(|a| match &a.value {
                AttrValue::Tensor(t) if t.name == name => Some(t),
                _ => None,
            })
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn valid_models_load_and_initializer_ranges_point_at_the_bytes() {
    let dir = corpus().join("valid");
    let expected = std::fs::read_to_string(dir.join("expected.tsv")).unwrap();
    let mut models: BTreeMap<String, OnnxModel> = BTreeMap::new();
    let mut rows = 0;
    for line in expected
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let c: Vec<&str> = line.split('\t').collect();
        let (model, name, file, offset, length, want) = (c[0], c[1], c[2], c[3], c[4], c[5]);
        let m = models.entry(model.to_string()).or_insert_with(|| {
            let (r, took) = load_timed(&dir.join(model));
            assert!(took < LIMIT);
            r.unwrap_or_else(|d| panic!("{model}: {d}"))
        });
        let t = find_tensor(m, name).unwrap_or_else(|| panic!("{model}: no tensor {name}"));
        let TensorData::Raw(r) = &t.data else {
            panic!("{model}: {name} is not raw: {:?}", t.data)
        };
        assert_eq!(r.file.rel, file, "{model}: {name}");
        assert_eq!(
            r.offset,
            offset.parse::<u64>().unwrap(),
            "{model}: {name} offset"
        );
        assert_eq!(
            r.length,
            length.parse::<u64>().unwrap(),
            "{model}: {name} length"
        );
        assert_eq!(hex(r.bytes()), want, "{model}: {name} bytes");
        // The range is a slice of the mapping (no copy), and the file on disk has those bytes there.
        let map = &r.file.map[..];
        let p = r.bytes().as_ptr() as usize;
        assert!(
            p >= map.as_ptr() as usize && p + r.bytes().len() <= map.as_ptr() as usize + map.len()
        );
        let disk = std::fs::read(dir.join(file)).unwrap();
        let (o, l) = (r.offset as usize, r.length as usize);
        assert_eq!(hex(&disk[o..o + l]), want);
        assert_eq!(r.to_blob().bytes().unwrap(), r.bytes());
        rows += 1;
    }
    assert!(rows >= 5);

    let tiny = &models["tiny.onnx"];
    assert_eq!(tiny.opset, 24);
    assert_eq!(tiny.ir_version, 10);
    assert_eq!(tiny.inputs.len(), 1);
    let x = tiny.inputs[0].ty.as_ref().unwrap();
    assert_eq!(x.dtype, DataType::Float);
    assert_eq!(
        x.shape.as_deref().unwrap(),
        &[Dim::Symbol("batch".into()), Dim::Fixed(4)]
    );
    let ops: Vec<&str> = tiny.nodes.iter().map(|n| n.op_type.as_str()).collect();
    assert_eq!(ops, ["MatMul", "Add", "Constant", "Mul"]);
    assert_eq!(tiny.nodes[0].path, "graph.node[0] (\"attention/MatMul\")");
    let s = tiny.initializer("S").unwrap();
    assert!(matches!(&s.data, TensorData::Int64s(v) if v == &[7, -7]));
    let q = tiny.initializer("Q").unwrap();
    assert_eq!((q.dtype, q.num_elements()), (DataType::Int4, 5));
    let f8 = tiny.initializer("F8").unwrap();
    assert_eq!(f8.raw_bytes().unwrap().len(), 2);
    let e = tiny.initializer("E").unwrap();
    assert_eq!((e.num_elements(), e.raw_bytes().unwrap().len()), (0, 0));
    let w = tiny.initializer("W").unwrap();
    assert_eq!(w.raw_bytes().unwrap().len(), 48);
    let b = tiny.initializer("B").unwrap();
    assert!(matches!(&b.data, TensorData::Floats(v) if v.len() == 3));

    // Both external tensors share one mapping of ext.bin.
    let ext = &models["ext.onnx"];
    let (TensorData::Raw(a), TensorData::Raw(b)) =
        (&ext.initializers[0].data, &ext.initializers[1].data)
    else {
        panic!("external tensors are not raw")
    };
    assert!(std::sync::Arc::ptr_eq(&a.file, &b.file));

    // Nodes listed out of order come out in topological order.
    let (r, _) = load_timed(&dir.join("unsorted.onnx"));
    let m = r.unwrap_or_else(|d| panic!("{d}"));
    let order: Vec<(usize, &str)> = m
        .nodes
        .iter()
        .map(|n| (n.index, n.op_type.as_str()))
        .collect();
    assert_eq!(order, [(1, "MatMul"), (0, "Add")]);
}

// ------------------------------------------------------------------ no second copy of the weights

#[cfg(target_os = "linux")]
fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A 64 MiB initializer loads without being copied or even read: resident memory and its peak grow by far
/// less than the weights (the file is written in chunks, so writing it costs no memory either).
#[cfg(target_os = "linux")]
#[test]
fn large_initializer_is_not_copied() {
    use prost::encoding::encode_varint;
    use std::io::Write;
    const N: u64 = 16 << 20; // FLOAT elements: 64 MiB
    let bytes = N * 4;
    let head = proto::TensorProto {
        name: "W".into(),
        dims: vec![N as i64],
        data_type: 1,
        ..Default::default()
    }
    .encode_to_vec();
    let out = proto::ValueInfoProto {
        name: "W".into(),
        r#type: Some(proto::TypeProto {
            value: Some(proto::type_proto::Value::TensorType(
                proto::type_proto::Tensor {
                    elem_type: 1,
                    shape: None,
                },
            )),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
    .encode_to_vec();
    let varint = |v: u64| {
        let mut b = Vec::new();
        encode_varint(v, &mut b);
        b
    };
    let tensor_len = head.len() as u64 + 1 + varint(bytes).len() as u64 + bytes;
    let mut graph_head = vec![0x2a];
    graph_head.extend(varint(tensor_len));
    graph_head.extend(&head);
    graph_head.push(0x4a);
    graph_head.extend(varint(bytes));
    let mut graph_tail = vec![0x62];
    graph_tail.extend(varint(out.len() as u64));
    graph_tail.extend(&out);
    let graph_len = graph_head.len() as u64 + bytes + graph_tail.len() as u64;
    let opset = proto::OperatorSetIdProto {
        domain: String::new(),
        version: 21,
    }
    .encode_to_vec();

    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("big.onnx");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    f.write_all(&[0x08, 0x0a, 0x3a]).unwrap();
    f.write_all(&varint(graph_len)).unwrap();
    f.write_all(&graph_head).unwrap();
    let chunk = vec![0x3fu8; 1 << 20];
    for _ in 0..bytes / chunk.len() as u64 {
        f.write_all(&chunk).unwrap();
    }
    f.write_all(&graph_tail).unwrap();
    f.write_all(&[0x42]).unwrap();
    f.write_all(&varint(opset.len() as u64)).unwrap();
    f.write_all(&opset).unwrap();
    drop(f);

    let (rss0, hwm0) = (status_kb("VmRSS:"), status_kb("VmHWM:"));
    let (r, took) = load_timed(&path);
    let m = r.unwrap_or_else(|d| panic!("{d}"));
    let (rss1, hwm1) = (status_kb("VmRSS:"), status_kb("VmHWM:"));
    let w = m.initializer("W").unwrap();
    let TensorData::Raw(raw) = &w.data else {
        panic!("not raw")
    };
    assert_eq!(raw.length, bytes);
    let budget_kb = 16 * 1024; // a quarter of the weights
    assert!(
        rss1.saturating_sub(rss0) < budget_kb && hwm1.saturating_sub(hwm0) < budget_kb,
        "loading a {} MiB model grew RSS by {} kB and its peak by {} kB",
        bytes >> 20,
        rss1.saturating_sub(rss0),
        hwm1.saturating_sub(hwm0)
    );
    eprintln!(
        "64 MiB initializer: loaded in {took:?}, RSS +{} kB, peak +{} kB",
        rss1.saturating_sub(rss0),
        hwm1.saturating_sub(hwm0)
    );
    assert_eq!(raw.bytes()[..4], [0x3f; 4]);
}
