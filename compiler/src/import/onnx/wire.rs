//! Locating a protobuf decode error.
//!
//! prost reports *what* went wrong and the message/field names on the way, but not the indices of repeated
//! fields. When prost rejects a file, [`locate`] walks the raw wire format with the same schema as
//! [`super::proto`] and the same rules prost applies (varints, keys, wire types of known fields, lengths,
//! UTF-8 of string fields, groups of unknown fields, nesting depth) and returns the field path of the first
//! problem, e.g. `graph.initializer[2].dims`, with a one-line description. It allocates only the path.
//!
//! Contract: [`locate`] never panics and never reads outside `buf`; it returns `None` when it finds nothing
//! wrong (the caller then falls back to prost's own description).

/// The messages of the schema, as far as the walker needs to know them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Msg {
    Model,
    Graph,
    Node,
    Attribute,
    Tensor,
    Segment,
    Entry,
    OpsetId,
    ValueInfo,
    Type,
    TypeTensor,
    Unsupported,
    Shape,
    Dim,
}

/// What a known field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Varint,
    F32,
    Str,
    Bytes,
    Message(Msg),
    PackedVarint,
    PackedF32,
    PackedF64,
}

/// prost's default recursion limit.
const MAX_DEPTH: u32 = 100;

fn field(msg: Msg, tag: u32) -> Option<(&'static str, Kind, bool)> {
    use Kind::*;
    let r = match (msg, tag) {
        (Msg::Model, 1) => ("ir_version", Varint, false),
        (Msg::Model, 8) => ("opset_import", Message(Msg::OpsetId), true),
        (Msg::Model, 2) => ("producer_name", Str, false),
        (Msg::Model, 3) => ("producer_version", Str, false),
        (Msg::Model, 4) => ("domain", Str, false),
        (Msg::Model, 5) => ("model_version", Varint, false),
        (Msg::Model, 6) => ("doc_string", Str, false),
        (Msg::Model, 7) => ("graph", Message(Msg::Graph), false),
        (Msg::Model, 14) => ("metadata_props", Message(Msg::Entry), true),
        (Msg::Model, 25) => ("functions", Bytes, true),
        (Msg::Entry, 1) => ("key", Str, false),
        (Msg::Entry, 2) => ("value", Str, false),
        (Msg::OpsetId, 1) => ("domain", Str, false),
        (Msg::OpsetId, 2) => ("version", Varint, false),
        (Msg::Graph, 1) => ("node", Message(Msg::Node), true),
        (Msg::Graph, 2) => ("name", Str, false),
        (Msg::Graph, 5) => ("initializer", Message(Msg::Tensor), true),
        (Msg::Graph, 15) => ("sparse_initializer", Bytes, true),
        (Msg::Graph, 10) => ("doc_string", Str, false),
        (Msg::Graph, 11) => ("input", Message(Msg::ValueInfo), true),
        (Msg::Graph, 12) => ("output", Message(Msg::ValueInfo), true),
        (Msg::Graph, 13) => ("value_info", Message(Msg::ValueInfo), true),
        (Msg::Graph, 16) => ("metadata_props", Message(Msg::Entry), true),
        (Msg::Node, 1) => ("input", Str, true),
        (Msg::Node, 2) => ("output", Str, true),
        (Msg::Node, 3) => ("name", Str, false),
        (Msg::Node, 4) => ("op_type", Str, false),
        (Msg::Node, 7) => ("domain", Str, false),
        (Msg::Node, 8) => ("overload", Str, false),
        (Msg::Node, 5) => ("attribute", Message(Msg::Attribute), true),
        (Msg::Node, 6) => ("doc_string", Str, false),
        (Msg::Node, 9) => ("metadata_props", Message(Msg::Entry), true),
        (Msg::Attribute, 1) => ("name", Str, false),
        (Msg::Attribute, 21) => ("ref_attr_name", Str, false),
        (Msg::Attribute, 13) => ("doc_string", Str, false),
        (Msg::Attribute, 20) => ("type", Varint, false),
        (Msg::Attribute, 2) => ("f", F32, false),
        (Msg::Attribute, 3) => ("i", Varint, false),
        (Msg::Attribute, 4) => ("s", Bytes, false),
        (Msg::Attribute, 5) => ("t", Message(Msg::Tensor), false),
        (Msg::Attribute, 6) => ("g", Bytes, false),
        (Msg::Attribute, 22) => ("sparse_tensor", Bytes, false),
        (Msg::Attribute, 14) => ("tp", Bytes, false),
        (Msg::Attribute, 7) => ("floats", PackedF32, false),
        (Msg::Attribute, 8) => ("ints", PackedVarint, false),
        (Msg::Attribute, 9) => ("strings", Bytes, true),
        (Msg::Attribute, 10) => ("tensors", Message(Msg::Tensor), true),
        (Msg::Attribute, 11) => ("graphs", Bytes, true),
        (Msg::Attribute, 23) => ("sparse_tensors", Bytes, true),
        (Msg::Attribute, 15) => ("type_protos", Bytes, true),
        (Msg::Tensor, 1) => ("dims", PackedVarint, false),
        (Msg::Tensor, 2) => ("data_type", Varint, false),
        (Msg::Tensor, 3) => ("segment", Message(Msg::Segment), false),
        (Msg::Tensor, 4) => ("float_data", PackedF32, false),
        (Msg::Tensor, 5) => ("int32_data", PackedVarint, false),
        (Msg::Tensor, 6) => ("string_data", Bytes, true),
        (Msg::Tensor, 7) => ("int64_data", PackedVarint, false),
        (Msg::Tensor, 8) => ("name", Str, false),
        (Msg::Tensor, 12) => ("doc_string", Str, false),
        (Msg::Tensor, 9) => ("raw_data", Bytes, false),
        (Msg::Tensor, 13) => ("external_data", Message(Msg::Entry), true),
        (Msg::Tensor, 14) => ("data_location", Varint, false),
        (Msg::Tensor, 10) => ("double_data", PackedF64, false),
        (Msg::Tensor, 11) => ("uint64_data", PackedVarint, false),
        (Msg::Tensor, 16) => ("metadata_props", Message(Msg::Entry), true),
        (Msg::Segment, 1) => ("begin", Varint, false),
        (Msg::Segment, 2) => ("end", Varint, false),
        (Msg::ValueInfo, 1) => ("name", Str, false),
        (Msg::ValueInfo, 2) => ("type", Message(Msg::Type), false),
        (Msg::ValueInfo, 3) => ("doc_string", Str, false),
        (Msg::Type, 1) => ("tensor_type", Message(Msg::TypeTensor), false),
        (Msg::Type, 4) => ("sequence_type", Message(Msg::Unsupported), false),
        (Msg::Type, 5) => ("map_type", Message(Msg::Unsupported), false),
        (Msg::Type, 7) => ("opaque_type", Message(Msg::Unsupported), false),
        (Msg::Type, 8) => ("sparse_tensor_type", Message(Msg::Unsupported), false),
        (Msg::Type, 9) => ("optional_type", Message(Msg::Unsupported), false),
        (Msg::Type, 6) => ("denotation", Str, false),
        (Msg::TypeTensor, 1) => ("elem_type", Varint, false),
        (Msg::TypeTensor, 2) => ("shape", Message(Msg::Shape), false),
        (Msg::Shape, 1) => ("dim", Message(Msg::Dim), true),
        (Msg::Dim, 1) => ("dim_value", Varint, false),
        (Msg::Dim, 2) => ("dim_param", Str, false),
        (Msg::Dim, 3) => ("denotation", Str, false),
        _ => return None,
    };
    Some(r)
}

fn wire_name(w: u8) -> &'static str {
    match w {
        0 => "varint",
        1 => "64-bit",
        2 => "length-delimited",
        3 => "start-group",
        4 => "end-group",
        5 => "32-bit",
        _ => "invalid",
    }
}

/// A problem found by the walker: the field path (without the leading dot) and a description.
pub type Located = (String, String);

/// Walks `buf` as a `ModelProto`; returns the path and description of the first wire-level problem.
pub fn locate(buf: &[u8]) -> Option<Located> {
    walk(buf, Msg::Model, "", 0, false).err()
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    /// Reads a varint; `Err(true)` when the buffer ends inside it, `Err(false)` when it is over 10 bytes.
    fn varint(&mut self) -> Result<u64, bool> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = *self.buf.get(self.pos).ok_or(true)?;
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(false);
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(false)
    }

    fn left(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
}

fn join(path: &str, seg: &str) -> String {
    if path.is_empty() {
        seg.to_string()
    } else {
        format!("{path}.{seg}")
    }
}

/// The error for a bad varint: cut short by the end of the data, or too long.
fn varint_err(path: &str, truncated: bool, eof: bool, what: &str) -> Located {
    if eof {
        err(path, true, format!("{what} cut short"))
    } else {
        err(
            path,
            truncated,
            format!("invalid varint ({what} longer than 10 bytes)"),
        )
    }
}

fn err(path: &str, truncated: bool, msg: String) -> Located {
    let msg = if truncated {
        format!("the file is truncated: {msg}")
    } else {
        msg
    };
    let path = if path.is_empty() { "model" } else { path };
    (path.to_string(), msg)
}

/// Walks one message body. `truncated` is set inside a field whose declared length ran past the end.
fn walk(buf: &[u8], msg: Msg, path: &str, depth: u32, truncated: bool) -> Result<(), Located> {
    if depth > MAX_DEPTH {
        return Err(err(path, truncated, "messages nest too deeply".into()));
    }
    let mut r = Reader { buf, pos: 0 };
    let mut counts: Vec<(u32, usize)> = Vec::new();
    while r.left() > 0 {
        let key = r
            .varint()
            .map_err(|eof| varint_err(path, truncated, eof, "field key"))?;
        if key > u64::from(u32::MAX) {
            return Err(err(path, truncated, format!("invalid field key {key}")));
        }
        let wire = (key & 7) as u8;
        let tag = (key >> 3) as u32;
        if wire > 5 {
            return Err(err(path, truncated, format!("invalid wire type {wire}")));
        }
        if tag == 0 {
            return Err(err(path, truncated, "invalid field number 0".into()));
        }
        let Some((name, kind, repeated)) = field(msg, tag) else {
            skip(&mut r, wire, tag, path, depth, truncated)?;
            continue;
        };
        let seg = if repeated {
            let idx = match counts.iter_mut().find(|(t, _)| *t == tag) {
                Some((_, n)) => {
                    *n += 1;
                    *n - 1
                }
                None => {
                    counts.push((tag, 1));
                    0
                }
            };
            format!("{name}[{idx}]")
        } else {
            name.to_string()
        };
        let fpath = join(path, &seg);
        let expected: &[u8] = match kind {
            Kind::Varint => &[0],
            Kind::F32 => &[5],
            Kind::Str | Kind::Bytes | Kind::Message(_) => &[2],
            Kind::PackedVarint => &[2, 0],
            Kind::PackedF32 => &[2, 5],
            Kind::PackedF64 => &[2, 1],
        };
        if !expected.contains(&wire) {
            return Err(err(
                &fpath,
                truncated,
                format!(
                    "wrong wire type: {} where {} was expected",
                    wire_name(wire),
                    wire_name(expected[0])
                ),
            ));
        }
        match wire {
            0 => {
                r.varint()
                    .map_err(|eof| varint_err(&fpath, truncated, eof, "varint"))?;
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if r.left() < n {
                    return Err(err(&fpath, true, format!("{n}-byte value cut short")));
                }
                r.pos += n;
            }
            _ => {
                let len = r
                    .varint()
                    .map_err(|eof| varint_err(&fpath, truncated, eof, "length"))?;
                let left = r.left();
                let (body, cut) = if len > left as u64 {
                    (&r.buf[r.pos..], true)
                } else {
                    (&r.buf[r.pos..r.pos + len as usize], false)
                };
                r.pos += body.len();
                let inner_trunc = truncated || cut;
                match kind {
                    Kind::Str if !cut && std::str::from_utf8(body).is_err() => {
                        return Err(err(&fpath, truncated, "string is not valid UTF-8".into()));
                    }
                    Kind::Message(m) => {
                        walk(body, m, &fpath, depth + 1, inner_trunc)?;
                    }
                    Kind::PackedVarint => {
                        let mut pr = Reader { buf: body, pos: 0 };
                        while pr.left() > 0 {
                            pr.varint().map_err(|eof| {
                                varint_err(&fpath, inner_trunc, eof, "varint in a packed list")
                            })?;
                        }
                    }
                    Kind::PackedF32 | Kind::PackedF64 => {
                        let w = if kind == Kind::PackedF32 { 4 } else { 8 };
                        if body.len() % w != 0 {
                            return Err(err(
                                &fpath,
                                inner_trunc,
                                format!(
                                    "packed list of {} bytes is not a multiple of {w}",
                                    body.len()
                                ),
                            ));
                        }
                    }
                    _ => {}
                }
                if cut {
                    return Err(err(
                        &fpath,
                        true,
                        format!("field of {len} bytes runs past the end ({left} bytes left)"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Skips an unknown field as prost does (groups included).
fn skip(
    r: &mut Reader<'_>,
    wire: u8,
    tag: u32,
    path: &str,
    depth: u32,
    truncated: bool,
) -> Result<(), Located> {
    let what = |m: &str| err(path, truncated, format!("unknown field {tag}: {m}"));
    match wire {
        0 => {
            r.varint()
                .map_err(|eof| varint_err(path, truncated, eof, "unknown field's varint"))?;
        }
        1 | 5 => {
            let n = if wire == 1 { 8 } else { 4 };
            if r.left() < n {
                return Err(err(
                    path,
                    true,
                    format!("unknown field {tag}: value cut short"),
                ));
            }
            r.pos += n;
        }
        2 => {
            let len = r
                .varint()
                .map_err(|eof| varint_err(path, truncated, eof, "unknown field's length"))?;
            if len > r.left() as u64 {
                return Err(err(
                    path,
                    true,
                    format!("unknown field {tag}: runs past the end"),
                ));
            }
            r.pos += len as usize;
        }
        3 => {
            if depth + 1 > MAX_DEPTH {
                return Err(what("groups nest too deeply"));
            }
            loop {
                if r.left() == 0 {
                    return Err(err(
                        path,
                        true,
                        format!("unknown field {tag}: group not closed"),
                    ));
                }
                let key = r
                    .varint()
                    .map_err(|eof| varint_err(path, truncated, eof, "key in a group"))?;
                if key > u64::from(u32::MAX) {
                    return Err(what("invalid key in a group"));
                }
                let (w, t) = ((key & 7) as u8, (key >> 3) as u32);
                if w > 5 || t == 0 {
                    return Err(what("invalid key in a group"));
                }
                if w == 4 {
                    if t != tag {
                        return Err(what("mismatched end-group tag"));
                    }
                    break;
                }
                skip(r, w, t, path, depth + 1, truncated)?;
            }
        }
        _ => return Err(what("unexpected end-group tag")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_indices_and_wire_types() {
        // graph { initializer {} initializer { dims: <fixed32> } }
        let bad = [0x3a, 0x09, 0x2a, 0x00, 0x2a, 0x05, 0x0d, 0, 0, 0, 0];
        let (p, m) = locate(&bad).unwrap();
        assert_eq!(p, "graph.initializer[1].dims");
        assert!(m.contains("wrong wire type"), "{m}");
        // graph with a length past the end
        let (p, m) = locate(&[0x3a, 0x09, 0x2a, 0x00]).unwrap();
        assert_eq!(p, "graph");
        assert!(m.contains("truncated"), "{m}");
        assert!(locate(&[0x08, 0x07]).is_none());
    }
}
