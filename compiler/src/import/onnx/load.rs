//! Loading an ONNX file: bytes on disk to a validated [`OnnxModel`].
//!
//! [`load_model`] memory-maps the file, decodes it with prost from a `Bytes` that wraps the mapping (so
//! every `raw_data` is a slice of the mapping: weights are never copied), then checks everything later
//! stages rely on and converts to the types of [`super::model`]. Each problem becomes one
//! [`Diagnostic`] located at `Location::Model { file, path }`, where `path` is the field path inside the
//! model, e.g. `graph.initializer[3].external_data["location"]` or `graph.node[2] ("attention/MatMul")`.
//!
//! Contracts:
//! - Never panics and never writes anything, whatever the bytes; reads only the model file and external
//!   data files that pass [`super::external`]'s checks, and only after their ranges are checked.
//! - Work is linear in the file size (plus a sort of the nodes); nothing waits on I/O that may block (the
//!   model and external files are opened non-blocking and must be regular files).
//! - Peak memory is the mapping plus the decoded graph structure; typed data fields (`float_data`, ...) are
//!   decoded copies, `raw_data` and external data are not copied.
//! - Accepted: IR versions [`MIN_IR_VERSION`]..=[`MAX_IR_VERSION`]; the default domain (`""` or
//!   `ai.onnx`) at opsets [`SUPPORTED_OPSETS`]; tensor types (not sequences, maps, optionals, sparse).
//!   Rejected with a message: other domains (ai.onnx.ml included) used by a node, graph attributes
//!   (If/Loop/Scan bodies), sparse tensors, segmented tensors, attribute references.

use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::fs::{File, OpenOptions};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use qc_ir::diag::{Diagnostic, Location};

use super::external::{self, MapOwner, MappedFile};
use super::model::*;
use super::proto::{self, attribute_type as at, type_proto, AttributeProto, TensorProto};
use super::wire;

/// Default-domain opset versions qc imports.
pub const SUPPORTED_OPSETS: RangeInclusive<i64> = 13..=24;
/// Oldest IR version accepted (the first with `opset_import`).
pub const MIN_IR_VERSION: i64 = 3;
/// Newest IR version accepted (ONNX 1.23).
pub const MAX_IR_VERSION: i64 = 14;

/// Loads and validates the ONNX model at `path`. Diagnostics name the file as `path.display()` shows it.
pub fn load_model(path: &Path) -> Result<OnnxModel, Diagnostic> {
    let file: Arc<str> = Arc::from(path.display().to_string());
    let at = |p: &str, m: String| {
        Diagnostic::error(
            Location::Model {
                file: file.clone(),
                path: p.to_string(),
            },
            m,
        )
    };
    let handle = open_model(path).map_err(|m| at("model", m))?;
    let rel = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mapped =
        Arc::new(MappedFile::map(&handle, rel, path.to_path_buf()).map_err(|m| at("model", m))?);
    drop(handle);
    if mapped.is_empty() {
        return Err(at(
            "model",
            "the file is empty; it is not an ONNX model".into(),
        ));
    }
    let bytes = Bytes::from_owner(MapOwner(mapped.map.clone()));
    let proto = match proto::ModelProto::decode(bytes) {
        Ok(p) => p,
        Err(e) => {
            let (p, m) = wire::locate(mapped.bytes()).unwrap_or_else(|| prost_error(&e));
            return Err(at(&p, format!("invalid protobuf: {m}")));
        }
    };
    let mut cx = Cx {
        file: file.clone(),
        dir,
        model: mapped,
        external: HashMap::new(),
    };
    cx.model_proto(proto)
}

#[cfg(unix)]
fn open_model(path: &Path) -> Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot open the model: {e}"))?;
    check_regular(f)
}

#[cfg(not(unix))]
fn open_model(path: &Path) -> Result<File, String> {
    let f = OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| format!("cannot open the model: {e}"))?;
    check_regular(f)
}

fn check_regular(f: File) -> Result<File, String> {
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot stat the model: {e}"))?;
    if !meta.is_file() {
        return Err("the model is not a regular file".into());
    }
    Ok(f)
}

/// Turns prost's `failed to decode Protobuf message: GraphProto.node: ModelProto.graph: why` (innermost
/// field first) into (`graph.node`, `why`). Used only when [`wire::locate`] finds nothing.
fn prost_error(e: &prost::DecodeError) -> (String, String) {
    let text = e.to_string();
    let rest = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    let mut path = Vec::new();
    let mut why = rest;
    for part in rest.split(": ") {
        match part.split_once('.') {
            Some((m, f)) if m.ends_with("Proto") || m.ends_with("Segment") => {
                path.push(f.to_string());
                why = why.get(part.len() + 2..).unwrap_or("");
            }
            _ => break,
        }
    }
    // prost lists the innermost field first.
    path.reverse();
    let path = if path.is_empty() {
        "model".to_string()
    } else {
        path.join(".")
    };
    (path, why.to_string())
}

/// `graph.node[i]`, with ` ("name")` when the node has a name.
fn node_path(i: usize, name: &str) -> String {
    if name.is_empty() {
        format!("graph.node[{i}]")
    } else {
        format!("graph.node[{i}] ({name:?})")
    }
}

/// How a node is named in messages: `node "name" (Op)` or `node 3 (Op)`.
fn node_desc(i: usize, n: &proto::NodeProto) -> String {
    if n.name.is_empty() {
        format!("node {i} ({})", n.op_type)
    } else {
        format!("node {:?} ({})", n.name, n.op_type)
    }
}

/// Loading state.
struct Cx {
    file: Arc<str>,
    dir: PathBuf,
    model: Arc<MappedFile>,
    /// External files mapped so far, by normalized location.
    external: HashMap<String, Arc<MappedFile>>,
}

type R<T> = Result<T, Diagnostic>;

/// Where a value is defined.
#[derive(Clone, Copy)]
enum Def {
    Input(usize),
    Init(usize),
    Node(usize, usize),
}

impl Def {
    fn path(self, nodes: &[proto::NodeProto]) -> String {
        match self {
            Def::Input(i) => format!("graph.input[{i}]"),
            Def::Init(i) => format!("graph.initializer[{i}]"),
            Def::Node(i, j) => format!(
                "{}.output[{j}]",
                node_path(i, nodes.get(i).map_or("", |n| n.name.as_str()))
            ),
        }
    }
}

impl Cx {
    fn err(&self, path: impl Into<String>, msg: impl Into<String>) -> Diagnostic {
        Diagnostic::error(
            Location::Model {
                file: self.file.clone(),
                path: path.into(),
            },
            msg,
        )
    }

    fn model_proto(&mut self, m: proto::ModelProto) -> R<OnnxModel> {
        let Some(graph) = m.graph else {
            return Err(self.err("graph", "the model has no graph"));
        };
        if !(MIN_IR_VERSION..=MAX_IR_VERSION).contains(&m.ir_version) {
            return Err(self.err(
                "ir_version",
                format!(
                    "unsupported IR version {}; qc reads IR versions {MIN_IR_VERSION} to {MAX_IR_VERSION}",
                    m.ir_version
                ),
            ));
        }
        let opset = self.opsets(&m.opset_import)?;
        let opset_imports = m
            .opset_import
            .iter()
            .map(|o| (o.domain.clone(), o.version))
            .collect();
        let metadata = m
            .metadata_props
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect();
        let g = self.graph(graph, opset, &m.opset_import)?;
        let initializer_index = g
            .initializers
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(OnnxModel {
            file: self.file.clone(),
            dir: self.dir.clone(),
            mapped: self.model.clone(),
            ir_version: m.ir_version,
            opset: opset.unwrap_or(0),
            opset_imports,
            producer_name: m.producer_name,
            producer_version: m.producer_version,
            graph_name: g.name,
            inputs: g.inputs,
            overridable_inputs: g.overridable,
            outputs: g.outputs,
            value_info: g.value_info,
            initializers: g.initializers,
            initializer_index,
            nodes: g.nodes,
            metadata,
        })
    }

    /// Checks `opset_import`; returns the default domain's version, if imported.
    fn opsets(&self, ops: &[proto::OperatorSetIdProto]) -> R<Option<i64>> {
        if ops.is_empty() {
            return Err(self.err(
                "opset_import",
                "the model imports no operator set; qc needs the default domain at opset 13 to 24",
            ));
        }
        let mut default = None;
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, o) in ops.iter().enumerate() {
            let path = format!("opset_import[{i}]");
            let dom = if o.domain == "ai.onnx" {
                ""
            } else {
                o.domain.as_str()
            };
            if let Some(j) = seen.insert(dom, i) {
                return Err(self.err(
                    path,
                    format!(
                        "domain {:?} is imported twice (also opset_import[{j}])",
                        o.domain
                    ),
                ));
            }
            if dom.is_empty() {
                if !SUPPORTED_OPSETS.contains(&o.version) {
                    return Err(self.err(
                        path,
                        format!(
                            "unsupported opset version {} of the default domain (ai.onnx); qc supports opsets {} to {}",
                            o.version,
                            SUPPORTED_OPSETS.start(),
                            SUPPORTED_OPSETS.end()
                        ),
                    ));
                }
                default = Some(o.version);
            } else if o.version < 1 {
                return Err(self.err(
                    path,
                    format!(
                        "invalid opset version {} of domain {:?}",
                        o.version, o.domain
                    ),
                ));
            }
        }
        Ok(default)
    }

    fn graph(
        &mut self,
        g: proto::GraphProto,
        opset: Option<i64>,
        imports: &[proto::OperatorSetIdProto],
    ) -> R<Graph> {
        if !g.sparse_initializer.is_empty() {
            return Err(self.err(
                "graph.sparse_initializer[0]",
                "sparse initializers are not supported",
            ));
        }
        // Initializers.
        let mut initializers = Vec::with_capacity(g.initializer.len());
        for (i, t) in g.initializer.iter().enumerate() {
            let path = format!("graph.initializer[{i}]");
            if t.name.is_empty() {
                return Err(self.err(format!("{path}.name"), "initializer has no name"));
            }
            initializers.push(self.tensor(t, &path)?);
        }
        // Values defined before any node.
        let mut defs: HashMap<&str, Def> = HashMap::new();
        for (i, t) in g.initializer.iter().enumerate() {
            if let Some(d) = defs.insert(t.name.as_str(), Def::Init(i)) {
                return Err(self.err(
                    format!("graph.initializer[{i}]"),
                    format!(
                        "duplicate initializer name {:?} (also {})",
                        t.name,
                        d.path(&g.node)
                    ),
                ));
            }
        }
        let mut inputs = Vec::new();
        let mut overridable = Vec::new();
        let mut input_names: HashMap<&str, usize> = HashMap::new();
        for (i, v) in g.input.iter().enumerate() {
            let path = format!("graph.input[{i}]");
            let vi = self.value_info(v, &path, true)?;
            if let Some(j) = input_names.insert(v.name.as_str(), i) {
                return Err(self.err(
                    path,
                    format!("duplicate graph input {:?} (also graph.input[{j}])", v.name),
                ));
            }
            match defs.entry(v.name.as_str()) {
                Entry::Occupied(_) => overridable.push(vi),
                Entry::Vacant(e) => {
                    e.insert(Def::Input(i));
                    inputs.push(vi);
                }
            }
        }
        let mut outputs = Vec::new();
        for (i, v) in g.output.iter().enumerate() {
            outputs.push(self.value_info(v, &format!("graph.output[{i}]"), true)?);
        }
        let mut value_info = Vec::new();
        for (i, v) in g.value_info.iter().enumerate() {
            let vi = self.value_info(v, &format!("graph.value_info[{i}]"), false)?;
            if vi.ty.is_some() {
                value_info.push(vi);
            }
        }
        // Node outputs: each value defined once.
        for (i, n) in g.node.iter().enumerate() {
            for (j, o) in n.output.iter().enumerate() {
                if o.is_empty() {
                    continue;
                }
                match defs.entry(o.as_str()) {
                    Entry::Occupied(e) => {
                        let first = e.get().path(&g.node);
                        return Err(self.err(
                            format!("{}.output[{j}]", node_path(i, &n.name)),
                            format!(
                                "output {o:?} of {} is already defined by {first}",
                                node_desc(i, n)
                            ),
                        ));
                    }
                    Entry::Vacant(e) => {
                        e.insert(Def::Node(i, j));
                    }
                }
            }
        }
        // Node inputs: each defined somewhere; edges between nodes.
        let n_nodes = g.node.len();
        let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n_nodes];
        let mut succs: Vec<Vec<usize>> = vec![Vec::new(); n_nodes];
        for (i, n) in g.node.iter().enumerate() {
            for (j, name) in n.input.iter().enumerate() {
                if name.is_empty() {
                    continue;
                }
                match defs.get(name.as_str()) {
                    None => {
                        return Err(self.err(
                            format!("{}.input[{j}]", node_path(i, &n.name)),
                            format!(
                                "input {name:?} of {} is not defined by a graph input, an initializer or any node",
                                node_desc(i, n)
                            ),
                        ))
                    }
                    Some(Def::Node(p, _)) => {
                        preds[i].push(*p);
                        succs[*p].push(i);
                    }
                    Some(_) => {}
                }
            }
        }
        let mut out_names: HashMap<&str, usize> = HashMap::new();
        for (i, v) in g.output.iter().enumerate() {
            if !defs.contains_key(v.name.as_str()) {
                return Err(self.err(
                    format!("graph.output[{i}]"),
                    format!(
                        "graph output {:?} is not defined by any node, graph input or initializer",
                        v.name
                    ),
                ));
            }
            if let Some(j) = out_names.insert(v.name.as_str(), i) {
                return Err(self.err(
                    format!("graph.output[{i}]"),
                    format!(
                        "duplicate graph output {:?} (also graph.output[{j}])",
                        v.name
                    ),
                ));
            }
        }
        let order = self.topo_order(&g.node, &preds, &succs)?;
        // Nodes: domain, attributes; emitted in topological order.
        let mut by_index: Vec<Option<Node>> = Vec::with_capacity(n_nodes);
        for (i, n) in g.node.iter().enumerate() {
            by_index.push(Some(self.node(i, n, opset, imports)?));
        }
        let nodes = order
            .into_iter()
            .filter_map(|i| by_index.get_mut(i).and_then(Option::take))
            .collect();
        Ok(Graph {
            name: g.name,
            inputs,
            overridable,
            outputs,
            value_info,
            initializers,
            nodes,
        })
    }

    /// Kahn's algorithm, smallest file index first (so an already sorted file keeps its order).
    fn topo_order(
        &self,
        nodes: &[proto::NodeProto],
        preds: &[Vec<usize>],
        succs: &[Vec<usize>],
    ) -> R<Vec<usize>> {
        let n = nodes.len();
        let mut indeg: Vec<usize> = preds.iter().map(Vec::len).collect();
        let mut ready: BinaryHeap<std::cmp::Reverse<usize>> = (0..n)
            .filter(|&i| indeg[i] == 0)
            .map(std::cmp::Reverse)
            .collect();
        let mut order = Vec::with_capacity(n);
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            order.push(i);
            for &s in &succs[i] {
                indeg[s] -= 1;
                if indeg[s] == 0 {
                    ready.push(std::cmp::Reverse(s));
                }
            }
        }
        if order.len() == n {
            return Ok(order);
        }
        // Every node left has a predecessor left: walk back from the first one until a node repeats.
        let Some(start) = (0..n).find(|&i| indeg[i] > 0) else {
            return Ok(order);
        };
        let mut walk = vec![start];
        let mut pos_in_walk: Vec<Option<usize>> = vec![None; n];
        pos_in_walk[start] = Some(0);
        let mut cur = start;
        let cycle = loop {
            let Some(&p) = preds[cur].iter().find(|&&p| indeg[p] > 0) else {
                break vec![cur];
            };
            if let Some(pos) = pos_in_walk[p] {
                break walk[pos..].to_vec();
            }
            pos_in_walk[p] = Some(walk.len());
            walk.push(p);
            cur = p;
        };
        // `cycle` lists nodes each of which consumes the next one's output; print in data-flow order.
        let first = cycle.iter().copied().min().unwrap_or(start);
        let mut flow: Vec<usize> = cycle.iter().rev().copied().collect();
        if let Some(k) = flow.iter().position(|&i| i == first) {
            flow.rotate_left(k);
        }
        flow.push(first);
        let names: Vec<String> = flow.iter().map(|&i| node_desc(i, &nodes[i])).collect();
        Err(self.err(
            node_path(first, &nodes[first].name),
            format!("the graph has a cycle: {}", names.join(" -> ")),
        ))
    }

    fn node(
        &mut self,
        i: usize,
        n: &proto::NodeProto,
        opset: Option<i64>,
        imports: &[proto::OperatorSetIdProto],
    ) -> R<Node> {
        let path = node_path(i, &n.name);
        if n.op_type.is_empty() {
            return Err(self.err(path, "node has no op_type"));
        }
        match n.domain.as_str() {
            "" | "ai.onnx" => {
                if opset.is_none() {
                    return Err(self.err(
                        path,
                        format!(
                            "{} is in the default domain, which the model does not import (opset_import)",
                            node_desc(i, n)
                        ),
                    ));
                }
            }
            "ai.onnx.ml" => {
                return Err(self.err(
                    path,
                    format!(
                        "{} is in the ai.onnx.ml domain (classical ML operators), which qc does not support",
                        node_desc(i, n)
                    ),
                ))
            }
            d => {
                let imported = imports.iter().any(|o| o.domain == d);
                return Err(self.err(
                    path,
                    format!(
                        "{} is in the operator domain {d:?}{}; qc supports only the default domain (ai.onnx) at opsets {} to {}",
                        node_desc(i, n),
                        if imported { "" } else { ", which the model does not even import" },
                        SUPPORTED_OPSETS.start(),
                        SUPPORTED_OPSETS.end()
                    ),
                ));
            }
        }
        let mut attributes: Vec<Attribute> = Vec::with_capacity(n.attribute.len());
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (k, a) in n.attribute.iter().enumerate() {
            let apath = format!("{path}.attribute[{k}]");
            let attr = self.attribute(a, &apath)?;
            if let Some(prev) = names.insert(a.name.as_str(), k) {
                return Err(self.err(
                    apath,
                    format!(
                        "duplicate attribute {:?} of {} (also attribute[{prev}])",
                        attr.name,
                        node_desc(i, n)
                    ),
                ));
            }
            attributes.push(attr);
        }
        Ok(Node {
            index: i,
            name: n.name.clone(),
            op_type: n.op_type.clone(),
            domain: String::new(),
            inputs: n.input.clone(),
            outputs: n.output.clone(),
            attributes,
            path,
        })
    }

    fn attribute(&mut self, a: &AttributeProto, path: &str) -> R<Attribute> {
        if a.name.is_empty() {
            return Err(self.err(format!("{path}.name"), "attribute has no name"));
        }
        if !a.ref_attr_name.is_empty() {
            return Err(self.err(
                format!("{path}.ref_attr_name"),
                format!(
                    "attribute {:?} refers to a function attribute, which is only valid inside a function",
                    a.name
                ),
            ));
        }
        let unsupported = |what: &str| {
            self.err(
                path,
                format!("attribute {:?}: {what} are not supported", a.name),
            )
        };
        // Which value fields are set (scalars only when non-zero).
        let set: [(&str, bool, i32); 12] = [
            ("f", a.f.to_bits() != 0, at::FLOAT),
            ("i", a.i != 0, at::INT),
            ("s", !a.s.is_empty(), at::STRING),
            ("t", a.t.is_some(), at::TENSOR),
            ("g", a.g.is_some(), at::GRAPH),
            (
                "sparse_tensor",
                a.sparse_tensor.is_some(),
                at::SPARSE_TENSOR,
            ),
            ("tp", a.tp.is_some(), at::TYPE_PROTO),
            ("floats", !a.floats.is_empty(), at::FLOATS),
            ("ints", !a.ints.is_empty(), at::INTS),
            ("strings", !a.strings.is_empty(), at::STRINGS),
            ("tensors", !a.tensors.is_empty(), at::TENSORS),
            ("graphs", !a.graphs.is_empty(), at::GRAPHS),
        ];
        if let Some((field, _, _)) = set.iter().find(|(_, on, ty)| *on && *ty != a.r#type) {
            if a.r#type != at::UNDEFINED {
                return Err(self.err(
                    format!("{path}.{field}"),
                    format!(
                        "attribute {:?} has type {} but its field {field} is set",
                        a.name,
                        attr_type_name(a.r#type)
                    ),
                ));
            }
        }
        let value = match a.r#type {
            at::FLOAT => AttrValue::Float(a.f),
            at::INT => AttrValue::Int(a.i),
            at::STRING => AttrValue::String(a.s.clone()),
            at::TENSOR => match &a.t {
                Some(t) => AttrValue::Tensor(self.tensor(t, &format!("{path}.t"))?),
                None => {
                    return Err(self.err(
                        path,
                        format!("attribute {:?} has type TENSOR but no tensor", a.name),
                    ))
                }
            },
            at::FLOATS => AttrValue::Floats(a.floats.clone()),
            at::INTS => AttrValue::Ints(a.ints.clone()),
            at::STRINGS => AttrValue::Strings(a.strings.clone()),
            at::TENSORS => {
                let mut v = Vec::with_capacity(a.tensors.len());
                for (k, t) in a.tensors.iter().enumerate() {
                    v.push(self.tensor(t, &format!("{path}.tensors[{k}]"))?);
                }
                AttrValue::Tensors(v)
            }
            at::GRAPH | at::GRAPHS => {
                return Err(unsupported("graph attributes (If, Loop and Scan bodies)"))
            }
            at::SPARSE_TENSOR | at::SPARSE_TENSORS => {
                return Err(unsupported("sparse tensor attributes"))
            }
            at::TYPE_PROTO | at::TYPE_PROTOS => return Err(unsupported("type attributes")),
            at::UNDEFINED => {
                return Err(self.err(
                    format!("{path}.type"),
                    format!("attribute {:?} has no type", a.name),
                ))
            }
            t => {
                return Err(self.err(
                    format!("{path}.type"),
                    format!("attribute {:?} has unknown type code {t}", a.name),
                ))
            }
        };
        if !a.sparse_tensors.is_empty() || !a.type_protos.is_empty() {
            return Err(self.err(
                path,
                format!(
                    "attribute {:?} carries sparse tensors or type protos, which are not supported",
                    a.name
                ),
            ));
        }
        Ok(Attribute {
            name: a.name.clone(),
            value,
            path: path.to_string(),
        })
    }

    fn value_info(&self, v: &proto::ValueInfoProto, path: &str, required: bool) -> R<ValueInfo> {
        if v.name.is_empty() {
            return Err(self.err(format!("{path}.name"), "value has no name"));
        }
        let what = if path.starts_with("graph.input") {
            "graph input"
        } else if path.starts_with("graph.output") {
            "graph output"
        } else {
            "value"
        };
        let ty = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            None if required => {
                return Err(self.err(
                    format!("{path}.type"),
                    format!("{what} {:?} has no type", v.name),
                ))
            }
            None => None,
            Some(type_proto::Value::TensorType(t)) => {
                let tpath = format!("{path}.type.tensor_type");
                let dtype = DataType::from_code(t.elem_type).ok_or_else(|| {
                    self.err(
                        format!("{tpath}.elem_type"),
                        format!("{what} {:?} has {}", v.name, dtype_problem(t.elem_type)),
                    )
                })?;
                let shape = match &t.shape {
                    None => None,
                    Some(s) => {
                        let mut dims = Vec::with_capacity(s.dim.len());
                        for (k, d) in s.dim.iter().enumerate() {
                            use proto::tensor_shape_proto::DimValue;
                            dims.push(match &d.value {
                                Some(DimValue::DimValue(x)) if *x < 0 => {
                                    return Err(self.err(
                                        format!("{tpath}.shape.dim[{k}]"),
                                        format!("{what} {:?} has negative dimension {x}", v.name),
                                    ))
                                }
                                Some(DimValue::DimValue(x)) => Dim::Fixed(*x as u64),
                                Some(DimValue::DimParam(p)) if !p.is_empty() => {
                                    Dim::Symbol(p.clone())
                                }
                                _ => Dim::Unknown,
                            });
                        }
                        Some(dims)
                    }
                };
                Some(TensorType { dtype, shape })
            }
            Some(other) => {
                let kind = match other {
                    type_proto::Value::SequenceType(_) => "a sequence",
                    type_proto::Value::MapType(_) => "a map",
                    type_proto::Value::OptionalType(_) => "an optional",
                    type_proto::Value::SparseTensorType(_) => "a sparse tensor",
                    type_proto::Value::OpaqueType(_) => "an opaque",
                    type_proto::Value::TensorType(_) => "a tensor",
                };
                return Err(self.err(
                    format!("{path}.type"),
                    format!(
                        "{what} {:?} has {kind} type; qc supports tensor types only",
                        v.name
                    ),
                ));
            }
        };
        Ok(ValueInfo {
            name: v.name.clone(),
            ty,
            path: path.to_string(),
        })
    }

    /// Validates a tensor and locates its data.
    fn tensor(&mut self, t: &TensorProto, path: &str) -> R<Tensor> {
        let named = if t.name.is_empty() {
            "tensor".to_string()
        } else {
            format!("tensor {:?}", t.name)
        };
        if t.segment.is_some() {
            return Err(self.err(
                format!("{path}.segment"),
                format!(
                    "{named} is a segment of a larger tensor; segmented tensors are not supported"
                ),
            ));
        }
        let dtype = DataType::from_code(t.data_type).ok_or_else(|| {
            self.err(
                format!("{path}.data_type"),
                format!("{named} has {}", dtype_problem(t.data_type)),
            )
        })?;
        let mut dims = Vec::with_capacity(t.dims.len());
        let mut n: u64 = 1;
        for (k, &d) in t.dims.iter().enumerate() {
            if d < 0 {
                return Err(self.err(
                    format!("{path}.dims[{k}]"),
                    format!("{named} has negative dimension {d}"),
                ));
            }
            n = n.checked_mul(d as u64).ok_or_else(|| {
                self.err(
                    format!("{path}.dims[{k}]"),
                    format!("{named}: the element count of dims {:?} overflows", t.dims),
                )
            })?;
            dims.push(d as u64);
        }
        let raw_size = match dtype.raw_size(n) {
            Some(s) => Some(s),
            None if dtype == DataType::String => None,
            None => {
                return Err(self.err(
                    format!("{path}.dims"),
                    format!(
                        "{named}: the byte size of {n} {} elements overflows",
                        dtype.name()
                    ),
                ))
            }
        };
        let shape = format!(
            "{} tensor of dims {:?} ({n} element{})",
            dtype.name(),
            t.dims,
            if n == 1 { "" } else { "s" }
        );

        // Which data fields are present.
        let fields: [(&str, bool); 7] = [
            ("raw_data", t.raw_data.is_some()),
            ("float_data", !t.float_data.is_empty()),
            ("int32_data", !t.int32_data.is_empty()),
            ("string_data", !t.string_data.is_empty()),
            ("int64_data", !t.int64_data.is_empty()),
            ("double_data", !t.double_data.is_empty()),
            ("uint64_data", !t.uint64_data.is_empty()),
        ];
        let mut present = fields.iter().filter(|(_, on)| *on).map(|(f, _)| *f);
        let first = present.next();
        if let Some(second) = present.next() {
            return Err(self.err(
                format!("{path}.{second}"),
                format!(
                    "{named} has both {} and {second}; exactly one data field may be used",
                    first.unwrap_or("")
                ),
            ));
        }
        match t.data_location {
            0 => {
                if !t.external_data.is_empty() {
                    return Err(self.err(
                        format!("{path}.external_data"),
                        format!("{named} has external_data but its data_location is not EXTERNAL"),
                    ));
                }
            }
            1 => {
                if let Some(f) = first {
                    return Err(self.err(
                        format!("{path}.{f}"),
                        format!("{named} is stored externally but also has {f}"),
                    ));
                }
                let Some(size) = raw_size else {
                    return Err(self.err(
                        format!("{path}.data_location"),
                        format!("{named}: STRING tensors cannot be stored externally"),
                    ));
                };
                let raw = self.external(t, path, &named, size, &shape)?;
                return Ok(Tensor {
                    name: t.name.clone(),
                    dtype,
                    dims,
                    data: TensorData::Raw(raw),
                    path: path.to_string(),
                });
            }
            d => {
                return Err(self.err(
                    format!("{path}.data_location"),
                    format!("{named} has unknown data_location {d} (0 = DEFAULT, 1 = EXTERNAL)"),
                ))
            }
        }
        let count_err = |field: &str, got: usize, want: u64, rule: &str| {
            self.err(
                format!("{path}.{field}"),
                format!("{named}: {field} holds {got} values but the {shape} needs {want}{rule}"),
            )
        };
        let wrong_field = |field: &str| {
            self.err(
                format!("{path}.{field}"),
                format!("{named}: {field} cannot hold {} elements", dtype.name()),
            )
        };
        use DataType as D;
        let data = match first {
            None => {
                if n != 0 {
                    return Err(self.err(
                        path,
                        format!("{named} has no data, but the {shape} needs some"),
                    ));
                }
                match dtype {
                    D::String => TensorData::Strings(Vec::new()),
                    _ => TensorData::Raw(RawData {
                        file: self.model.clone(),
                        offset: 0,
                        length: 0,
                    }),
                }
            }
            Some("raw_data") => {
                let raw = t.raw_data.as_ref().map_or(&[][..], |b| &b[..]);
                let Some(want) = raw_size else {
                    return Err(self.err(
                        format!("{path}.raw_data"),
                        format!("{named}: STRING tensors must use string_data, not raw_data"),
                    ));
                };
                if raw.len() as u64 != want {
                    let rule = match dtype.bits() {
                        Some(4) => " (two 4-bit elements per byte, rounded up)",
                        Some(2) => " (four 2-bit elements per byte, rounded up)",
                        Some(6) => " (four 6-bit elements per 3 bytes, rounded up)",
                        _ => "",
                    };
                    return Err(self.err(
                        format!("{path}.raw_data"),
                        format!(
                            "{named}: raw_data holds {} bytes but the {shape} needs {want}{rule}",
                            raw.len()
                        ),
                    ));
                }
                TensorData::Raw(self.in_model(raw, path)?)
            }
            Some("float_data") => {
                let want = match dtype {
                    D::Float => n,
                    D::Complex64 => n.saturating_mul(2),
                    _ => return Err(wrong_field("float_data")),
                };
                if t.float_data.len() as u64 != want {
                    return Err(count_err("float_data", t.float_data.len(), want, ""));
                }
                TensorData::Floats(t.float_data.clone())
            }
            Some("double_data") => {
                let want = match dtype {
                    D::Double => n,
                    D::Complex128 => n.saturating_mul(2),
                    _ => return Err(wrong_field("double_data")),
                };
                if t.double_data.len() as u64 != want {
                    return Err(count_err("double_data", t.double_data.len(), want, ""));
                }
                TensorData::Doubles(t.double_data.clone())
            }
            Some("int64_data") => {
                if dtype != D::Int64 {
                    return Err(wrong_field("int64_data"));
                }
                if t.int64_data.len() as u64 != n {
                    return Err(count_err("int64_data", t.int64_data.len(), n, ""));
                }
                TensorData::Int64s(t.int64_data.clone())
            }
            Some("uint64_data") => {
                if !matches!(dtype, D::Uint32 | D::Uint64) {
                    return Err(wrong_field("uint64_data"));
                }
                if t.uint64_data.len() as u64 != n {
                    return Err(count_err("uint64_data", t.uint64_data.len(), n, ""));
                }
                TensorData::Uint64s(t.uint64_data.clone())
            }
            Some("string_data") => {
                if dtype != D::String {
                    return Err(wrong_field("string_data"));
                }
                if t.string_data.len() as u64 != n {
                    return Err(count_err("string_data", t.string_data.len(), n, ""));
                }
                TensorData::Strings(t.string_data.clone())
            }
            Some(_) => {
                // int32_data
                let (want, rule) = match dtype {
                    D::Float
                    | D::Double
                    | D::Int64
                    | D::Uint32
                    | D::Uint64
                    | D::String
                    | D::Complex64
                    | D::Complex128 => return Err(wrong_field("int32_data")),
                    D::Int4 | D::Uint4 | D::Float4E2M1 => {
                        (n.div_ceil(2), " (two 4-bit elements per entry, rounded up)")
                    }
                    D::Int2 | D::Uint2 => (
                        n.div_ceil(4),
                        " (four 2-bit elements per entry, rounded up)",
                    ),
                    _ => (n, ""),
                };
                if t.int32_data.len() as u64 != want {
                    return Err(count_err("int32_data", t.int32_data.len(), want, rule));
                }
                TensorData::Int32s(t.int32_data.clone())
            }
        };
        Ok(Tensor {
            name: t.name.clone(),
            dtype,
            dims,
            data,
            path: path.to_string(),
        })
    }

    /// The file range of `raw`, a slice of the model mapping.
    fn in_model(&self, raw: &[u8], path: &str) -> R<RawData> {
        if raw.is_empty() {
            return Ok(RawData {
                file: self.model.clone(),
                offset: 0,
                length: 0,
            });
        }
        let base = self.model.bytes().as_ptr() as usize;
        let p = raw.as_ptr() as usize;
        let len = self.model.bytes().len();
        match p.checked_sub(base) {
            Some(off) if off.checked_add(raw.len()).is_some_and(|e| e <= len) => Ok(RawData {
                file: self.model.clone(),
                offset: off as u64,
                length: raw.len() as u64,
            }),
            _ => Err(self.err(
                format!("{path}.raw_data"),
                "internal error: raw_data was copied out of the mapped file",
            )),
        }
    }

    /// Resolves external data: keys, location checks, range against the file size, then the mapping.
    fn external(
        &mut self,
        t: &TensorProto,
        path: &str,
        named: &str,
        size: u64,
        shape: &str,
    ) -> R<RawData> {
        let key_path = |k: &str| format!("{path}.external_data[{k:?}]");
        if t.external_data.is_empty() {
            return Err(self.err(
                format!("{path}.external_data"),
                format!("{named} is stored externally but has no external_data entries"),
            ));
        }
        let (mut location, mut offset, mut length) = (None, None, None);
        let mut seen: HashMap<&str, ()> = HashMap::new();
        for e in &t.external_data {
            let k = e.key.as_str();
            if seen.insert(k, ()).is_some() {
                return Err(self.err(
                    key_path(k),
                    format!("{named}: duplicate external_data key {k:?}"),
                ));
            }
            let number = |v: &str| {
                v.parse::<u64>().map_err(|_| {
                    self.err(
                        key_path(k),
                        format!("{named}: external_data {k:?} value {v:?} is not a non-negative integer"),
                    )
                })
            };
            match k {
                "location" => location = Some(e.value.as_str()),
                "offset" => offset = Some(number(&e.value)?),
                "length" => length = Some(number(&e.value)?),
                "checksum" => {}
                _ => {
                    return Err(self.err(
                        key_path(k),
                        format!(
                            "{named}: unknown external_data key {k:?} (allowed: location, offset, length, checksum)"
                        ),
                    ))
                }
            }
        }
        let Some(location) = location else {
            return Err(self.err(
                format!("{path}.external_data"),
                format!("{named}: external_data has no \"location\""),
            ));
        };
        let loc_path = key_path("location");
        let parts = external::check_location(location)
            .map_err(|m| self.err(loc_path.clone(), format!("{named}: {m}")))?;
        let norm = parts.join("/");
        // A file already mapped for an earlier tensor is reused; a new one is opened (with every check) and
        // its size taken from the open descriptor, but mapped only after the range is checked.
        let src = match self.external.get(&norm) {
            Some(m) => Ok(m.clone()),
            None => Err(external::open_external(&self.dir, location)
                .map_err(|m| self.err(loc_path.clone(), format!("{named}: {m}")))?),
        };
        let file_size = match &src {
            Ok(m) => m.len(),
            Err((_, s)) => *s,
        };
        let offset = offset.unwrap_or(0);
        let range_key = if length.is_some() { "length" } else { "offset" };
        let len = external::check_range(offset, length, file_size).map_err(|m| {
            self.err(
                key_path(range_key),
                format!("{named}: external data in {location:?}: {m}"),
            )
        })?;
        if len != size {
            return Err(self.err(
                key_path(range_key),
                format!(
                    "{named}: external data in {location:?} has {len} bytes but the {shape} needs {size}"
                ),
            ));
        }
        let mapped = match src {
            Ok(m) => m,
            Err((f, _)) => {
                let m = Arc::new(
                    MappedFile::map(&f, norm.clone(), self.dir.join(&norm))
                        .map_err(|m| self.err(loc_path.clone(), format!("{named}: {m}")))?,
                );
                if m.len() != file_size {
                    return Err(self.err(
                        loc_path,
                        format!(
                            "{named}: external data file {location:?} changed size while loading"
                        ),
                    ));
                }
                self.external.insert(norm, m.clone());
                m
            }
        };
        Ok(RawData {
            file: mapped,
            offset,
            length: len,
        })
    }
}

fn dtype_problem(code: i32) -> String {
    if code == 0 {
        "no data type (UNDEFINED)".to_string()
    } else {
        format!("unknown data type code {code}")
    }
}

fn attr_type_name(t: i32) -> String {
    let name = match t {
        at::FLOAT => "FLOAT",
        at::INT => "INT",
        at::STRING => "STRING",
        at::TENSOR => "TENSOR",
        at::GRAPH => "GRAPH",
        at::FLOATS => "FLOATS",
        at::INTS => "INTS",
        at::STRINGS => "STRINGS",
        at::TENSORS => "TENSORS",
        at::GRAPHS => "GRAPHS",
        at::SPARSE_TENSOR => "SPARSE_TENSOR",
        at::SPARSE_TENSORS => "SPARSE_TENSORS",
        at::TYPE_PROTO => "TYPE_PROTO",
        at::TYPE_PROTOS => "TYPE_PROTOS",
        at::UNDEFINED => "UNDEFINED",
        _ => return format!("code {t}"),
    };
    name.to_string()
}

/// The converted graph.
struct Graph {
    name: String,
    inputs: Vec<ValueInfo>,
    overridable: Vec<ValueInfo>,
    outputs: Vec<ValueInfo>,
    value_info: Vec<ValueInfo>,
    initializers: Vec<Tensor>,
    nodes: Vec<Node>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prost_errors_become_paths() {
        // A wrong wire type for `graph`, decoded by prost directly.
        let e = proto::ModelProto::decode(&[0x38, 0x01][..]).unwrap_err();
        let (path, why) = prost_error(&e);
        assert_eq!(path, "graph");
        assert!(why.contains("wire type"), "{why}");
        let e = proto::ModelProto::decode(&[0x3a, 0x02, 0x0a, 0x05][..]).unwrap_err();
        let (path, _) = prost_error(&e);
        assert!(path.starts_with("graph"), "{path}");
    }

    #[test]
    fn data_type_codes_round_trip() {
        for (i, t) in DataType::ALL.iter().enumerate() {
            assert_eq!(DataType::from_code(i as i32 + 1), Some(*t));
            assert_eq!(t.code(), i as i32 + 1);
        }
        assert_eq!(DataType::from_code(0), None);
        assert_eq!(DataType::from_code(29), None);
        assert_eq!(DataType::Int4.raw_size(15), Some(8));
        assert_eq!(DataType::Uint2.raw_size(5), Some(2));
        assert_eq!(DataType::Float6E2M3.raw_size(5), Some(4));
        assert_eq!(DataType::Float.raw_size(u64::MAX), None);
    }
}
