//! Round-trip property tests: for random valid modules (tests/src/gen.rs), printing, parsing and printing
//! again gives the same text, with resources (`PrintOptions::full()`) and without (`PrintOptions::dump()`),
//! and parsing preserves the module's structure. Regression cases found by fuzzing (fuzz/) are at the end.

use qc_ir::attr::{Attribute, Attrs, DenseData};
use qc_ir::module::Module;
use qc_ir::resource::Blob;
use qc_ir::{parse_module, print_module, verify_module, PrintOptions, Source};
use qc_tests::gen::{gen_module, gen_module_with, GenOptions};

/// Seeds per property; override with QC_ROUNDTRIP_SEEDS.
fn seeds() -> u64 {
    std::env::var("QC_ROUNDTRIP_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500)
}

fn parse(text: &str) -> Result<Module, String> {
    parse_module(text, &Source::named("<roundtrip>"), &qc::registry()).map_err(|d| format!("{d:?}"))
}

/// print -> parse (must succeed and verify) -> print gives the same text; returns the reparsed module.
fn check_text_round_trip(what: &str, m: &Module, opts: PrintOptions) -> Module {
    let t1 = print_module(m, opts);
    let m2 = parse(&t1)
        .unwrap_or_else(|e| panic!("{what}: the printed module does not parse: {e}\n{t1}"));
    if let Err(e) = verify_module(&m2) {
        panic!("{what}: the reparsed module does not verify: {e:?}\n{t1}");
    }
    let t2 = print_module(&m2, opts);
    if t1 != t2 {
        let line = t1
            .lines()
            .zip(t2.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "{what}: print(parse(print(m))) != print(m), first difference at line {}:\n  {}\n  {}\n--- first print ---\n{t1}--- second print ---\n{t2}",
            line + 1,
            t1.lines().nth(line).unwrap_or(""),
            t2.lines().nth(line).unwrap_or("")
        );
    }
    m2
}

#[test]
fn generated_modules_verify_and_round_trip_through_text() {
    for seed in 0..seeds() {
        let m = gen_module(seed);
        verify_module(&m)
            .unwrap_or_else(|e| panic!("seed {seed}: generated module does not verify: {e:?}"));
        check_text_round_trip(&format!("seed {seed}, full"), &m, PrintOptions::full());
        let m2 = check_text_round_trip(&format!("seed {seed}, dump"), &m, PrintOptions::dump());
        // Once elided, resources stay elided, and the dump is a fixed point too.
        check_text_round_trip(
            &format!("seed {seed}, dump of the reparsed dump"),
            &m2,
            PrintOptions::dump(),
        );
    }
}

#[test]
fn static_shape_modules_have_only_static_dimensions_and_round_trip() {
    let opts = GenOptions {
        static_shapes: true,
    };
    for seed in 0..seeds() / 2 {
        let m = gen_module_with(seed, opts);
        for f in &m.funcs {
            let values = f.args.iter().chain(f.ops.iter().flat_map(|o| &o.results));
            for &v in values {
                assert!(
                    f.ty(v).static_shape().is_some(),
                    "seed {seed}: {} in @{}",
                    f.ty(v),
                    f.name
                );
            }
        }
        check_text_round_trip(&format!("static seed {seed}"), &m, PrintOptions::full());
    }
}

#[test]
fn generator_is_deterministic() {
    for seed in [0, 1, 42, 4242] {
        let a = print_module(&gen_module(seed), PrintOptions::full());
        let b = print_module(&gen_module(seed), PrintOptions::full());
        assert_eq!(a, b, "seed {seed}");
    }
}

/// An attribute as a comparable key: dense data as the parser produces it (a list of bit-identical values
/// collapses to a splat), floats by their bits (DenseData's derived `==` says NaN != NaN and 0.0 == -0.0).
fn attr_key(a: &Attribute) -> String {
    match a {
        Attribute::Dense(d) => match d.clone().canonical() {
            DenseData::Float(v) => format!(
                "dense-f{:x?}",
                v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            ),
            other => format!("dense-{other:?}"),
        },
        Attribute::Float(x) => format!("f{:x}", x.0.to_bits()),
        Attribute::Array(v) => format!(
            "[{}]",
            v.iter().map(attr_key).collect::<Vec<_>>().join(", ")
        ),
        other => format!("{other:?}"),
    }
}

fn canon_attrs(a: &Attrs) -> Vec<(String, String)> {
    a.iter()
        .map(|(k, v)| (k.to_string(), attr_key(v)))
        .collect()
}

/// Asserts that `b` (reparsed) has the structure of `a` (generated): functions, argument and result
/// types, ops with their operands (by position of definition), result types and attributes, returned
/// values and owned resources.
fn assert_same_structure(seed: u64, a: &Module, b: &Module) {
    assert_eq!(a.funcs.len(), b.funcs.len(), "seed {seed}: function count");
    for (fa, fb) in a.funcs.iter().zip(&b.funcs) {
        let ctx = format!("seed {seed}, @{}", fa.name);
        assert_eq!(fa.name, fb.name, "{ctx}: name");
        assert_eq!(fa.ops.len(), fb.ops.len(), "{ctx}: op count");
        assert_eq!(fa.result_types, fb.result_types, "{ctx}: result types");
        let ta: Vec<_> = fa.args.iter().map(|&v| fa.ty(v)).collect();
        let tb: Vec<_> = fb.args.iter().map(|&v| fb.ty(v)).collect();
        assert_eq!(ta, tb, "{ctx}: argument types");
        // Number definitions in order (arguments, then results) to compare operands across modules.
        let order = |f: &qc_ir::Func| {
            let mut pos = vec![usize::MAX; f.num_values()];
            let defs = f.args.iter().chain(f.ops.iter().flat_map(|o| &o.results));
            for (i, v) in defs.enumerate() {
                pos[v.0 as usize] = i;
            }
            pos
        };
        let (pa, pb) = (order(fa), order(fb));
        for (i, (oa, ob)) in fa.ops.iter().zip(&fb.ops).enumerate() {
            let ctx = format!("{ctx}, op {i} ({})", oa.name());
            assert_eq!(oa.name(), ob.name(), "{ctx}: op name");
            let opa: Vec<usize> = oa.operands.iter().map(|v| pa[v.0 as usize]).collect();
            let opb: Vec<usize> = ob.operands.iter().map(|v| pb[v.0 as usize]).collect();
            assert_eq!(opa, opb, "{ctx}: operands");
            let ra: Vec<_> = oa.results.iter().map(|&v| fa.ty(v)).collect();
            let rb: Vec<_> = ob.results.iter().map(|&v| fb.ty(v)).collect();
            assert_eq!(ra, rb, "{ctx}: result types");
            assert_eq!(
                canon_attrs(&oa.attrs),
                canon_attrs(&ob.attrs),
                "{ctx}: attributes"
            );
        }
        let ra: Vec<usize> = fa.ret.iter().map(|v| pa[v.0 as usize]).collect();
        let rb: Vec<usize> = fb.ret.iter().map(|v| pb[v.0 as usize]).collect();
        assert_eq!(ra, rb, "{ctx}: returned values");
    }
    for (name, blob) in a.resources.iter() {
        match blob {
            Blob::Owned { .. } => assert_eq!(
                b.resources.get(name),
                Some(blob),
                "seed {seed}: resource {name}"
            ),
            Blob::Mapped { .. } | Blob::Elided => {}
        }
    }
}

#[test]
fn parsing_the_printed_module_preserves_structure() {
    for seed in 0..seeds() {
        let m = gen_module(seed);
        let text = print_module(&m, PrintOptions::full());
        let m2 = parse(&text).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{text}"));
        assert_same_structure(seed, &m, &m2);
        // Value names: the reparsed module's hints are the printed names, so they are unique.
        for f in &m2.funcs {
            let mut names: Vec<&str> = f
                .args
                .iter()
                .chain(f.ops.iter().flat_map(|o| &o.results))
                .map(|&v| f.value(v).name.as_deref().expect("parsed values are named"))
                .collect();
            let n = names.len();
            names.sort_unstable();
            names.dedup();
            assert_eq!(
                names.len(),
                n,
                "seed {seed}: @{} has duplicate value names\n{text}",
                f.name
            );
        }
    }
}

#[test]
fn the_generator_covers_the_grammar() {
    // Over the seeds, every kind of attribute, every named format and each op family shows up.
    let mut text = String::new();
    for seed in 0..seeds().min(300) {
        text += &print_module(&gen_module(seed), PrintOptions::full());
    }
    for needle in [
        "dense<",
        "dense_resource<",
        "= true",
        "unit]",
        "= \"",
        "= [",
        "= tensor<",
        "nan(0x",
        "inf",
        "-0.0",
        "!quant.fmt<",
        "policy = ",
        "!quant.raw<",
        "f8E4M3FN",
        "[seq]",
        "?x",
        "nn.transpose",
        "nn.reshape",
        "nn.concat",
        "nn.shape",
        "quant.quantize",
        "quant.dequantize",
        "nn.matmul",
        "nn.reduce_sum",
        "{-#",
        "\\00",
        "\\7F",
        "\\n",
        "\\\"",
    ] {
        assert!(
            text.contains(needle),
            "no generated module contains {needle:?}"
        );
    }
    for f in qc_ir::quant::named_formats() {
        assert!(
            text.contains(&format!("!quant.{}>", f.name)),
            "no generated module uses !quant.{}",
            f.name
        );
    }
    assert!(text.contains("\\\\"), "no escaped backslash");
}

// ---- regression cases found by fuzzing (fuzz/) or by the generator ----

/// Parses `text`, then checks that its full and dump prints are fixed points of print(parse(.)).
fn assert_text_fixed_point(text: &str) {
    let m = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for opts in [PrintOptions::full(), PrintOptions::dump()] {
        let t1 = print_module(&m, opts);
        let m2 = parse(&t1).unwrap_or_else(|e| panic!("reparse failed: {e}\n{t1}"));
        assert_eq!(t1, print_module(&m2, opts), "input:\n{text}");
    }
}

#[test]
fn regression_non_canonical_dense_list_prints_as_a_splat() {
    // A dense list of bit-identical values is valid, but the parser collapses it to a splat, so the
    // printer must print the canonical form for print(parse(print(m))) == print(m).
    let mut m = parse("module { func.func @f() -> tensor<2xf32> { %0 = qc.constant {value = dense<[1.0, 2.0]>} : () -> tensor<2xf32> return %0 : tensor<2xf32> } }").unwrap();
    let op = &mut m.funcs[0].ops[0];
    op.attrs.set(
        "value",
        Attribute::Dense(DenseData::Float(vec![f64::NAN, f64::NAN])),
    );
    op.attrs.set(
        "qc.note",
        Attribute::Array(vec![Attribute::Dense(DenseData::Int(vec![7, 7, 7]))]),
    );
    verify_module(&m).unwrap();
    check_text_round_trip("non-canonical dense", &m, PrintOptions::full());
}

#[test]
fn regression_generic_minifloat_with_e8m0_widths_round_trips() {
    // A minifloat with 8 exponent and 0 mantissa bits prints as `e8m0<bias = B, policy = P>`; the parser
    // took `e8m0` for the special scale encoding and rejected the parameters.
    use qc_ir::quant::{Encoding, InfNan, Minifloat};
    use qc_ir::types::{ElemType, TensorType};
    for policy in [InfNan::Ieee, InfNan::Fn, InfNan::Fnuz, InfNan::None] {
        let enc = Encoding::Float(Minifloat {
            exp_bits: 8,
            man_bits: 0,
            bias: 127,
            policy,
        });
        let t = TensorType::new(&[2], ElemType::Raw(enc));
        let text = t.to_string();
        assert_eq!(
            qc_ir::parse_type(&text).unwrap_or_else(|e| panic!("{text}: {e:?}")),
            t
        );
    }
    assert_text_fixed_point(
        "func.func @f(%x: tensor<?x!quant.raw<e8m0<bias = -3, policy = fnuz>>>, %y: tensor<f8E8M0FNU>) { return }",
    );
    // The special encoding itself still takes no parameters when spelled as a scale.
    assert!(qc_ir::parse_type(
        "tensor<4x!quant.fmt<e2m1, group<32>, scale = e8m0<bias = 1>, rule = floor>>"
    )
    .is_err());
}

#[test]
fn regression_verifier_survives_concat_dimension_overflow() {
    let text = "func.func @f(%x: tensor<18446744073709551615xf32>) {\n  %c = nn.concat %x, %x {axis = 0} : (tensor<18446744073709551615xf32>, tensor<18446744073709551615xf32>) -> tensor<?xf32>\n  return\n}";
    let m = parse(text).unwrap();
    assert!(
        verify_module(&m).is_err(),
        "the concatenated dimension does not fit in 64 bits"
    );
}

#[test]
fn regression_empty_dense_list_of_a_zero_element_constant_round_trips() {
    // Found by the `pipeline` fuzz target: canonicalize folds an op on a zero-element tensor into
    // `qc.constant {value = dense<[]>}`, which must parse back (it did not then). Empty lists of every
    // kind print as `dense<[]>`.
    let mut m = parse(
        "func.func @f() -> (tensor<0x8xi44>, tensor<2x0xf32>, tensor<0xi1>) {
           %a = qc.constant {value = dense<1>} : () -> tensor<0x8xi44>
           %b = qc.constant {value = dense<1.0>} : () -> tensor<2x0xf32>
           %c = qc.constant {value = dense<true>} : () -> tensor<0xi1>
           return %a, %b, %c : tensor<0x8xi44>, tensor<2x0xf32>, tensor<0xi1>
         }",
    )
    .unwrap();
    let empty = [
        DenseData::Int(vec![]),
        DenseData::Float(vec![]),
        DenseData::Bool(vec![]),
    ];
    for (op, d) in m.funcs[0].ops.iter_mut().zip(empty) {
        op.attrs.set("value", Attribute::Dense(d.clone()));
        op.attrs
            .set("qc.note", Attribute::Array(vec![Attribute::Dense(d)]));
    }
    verify_module(&m).unwrap();
    let m2 = check_text_round_trip("empty dense", &m, PrintOptions::full());
    let text = print_module(&m2, PrintOptions::full());
    for ty in ["tensor<0x8xi44>", "tensor<2x0xf32>", "tensor<0xi1>"] {
        assert!(
            text.contains(&format!("value = dense<[]>}} : () -> {ty}")),
            "{text}"
        );
    }
}
