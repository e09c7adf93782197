//! A deterministic random generator of valid qc modules, for round-trip property tests.
//!
//! [`gen_module`] builds a module from a seed (ChaCha8, so the same seed gives the same module on every
//! platform): several functions whose arguments have static, dynamic and symbolic dimensions and random
//! element types (every named quantized format, random valid `!quant.fmt<...>` parameter sets, generic
//! minifloats, raw minifloats), and bodies of ops whose result types the generator infers (elementwise nn
//! ops, transpose, reshape, shape, concat, reduce_sum, matmul, cast, constants with dense literals and
//! out-of-line resources, quantize / dequantize). Ops carry random discardable annotations (attribute
//! names with a `.`) covering every [`Attribute`] variant, and values carry random name hints, duplicates
//! included. Every module it returns passes [`qc_ir::verify_module`] (the generator asserts it).

use std::sync::Arc;

use qc_ir::attr::{Attribute, Attrs, DenseData, F64Bits};
use qc_ir::module::{sanitize_name, Func, Module, Value};
use qc_ir::ops::{OpDef, Registry};
use qc_ir::quant::{
    named_formats, validate_minifloat, Convention, Encoding, InfNan, Minifloat, Packing, QuantType,
    Rounding, Saturation, ScaleRule, ScaleType, Scheme, TensorScale,
};
use qc_ir::resource::Blob;
use qc_ir::types::{Dim, ElemType, TensorType};
use qc_ir::Location;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What kind of modules to generate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenOptions {
    /// Only static dimensions. Such modules are consistent at run time too: with dynamic or symbolic
    /// dimensions a module can verify yet be impossible to run (a 4-element tensor reshaped to `?`, then to
    /// 8 elements), and a pass that folds such ops may then rightly produce IR that no longer verifies.
    pub static_shapes: bool,
}

/// Builds a valid module from `seed`, using the ops of `qc::registry()`.
pub fn gen_module(seed: u64) -> Module {
    gen_module_with(seed, GenOptions::default())
}

/// Builds a valid module of the kind `opts` asks for from `seed`.
pub fn gen_module_with(seed: u64, opts: GenOptions) -> Module {
    let registry = qc::registry();
    let mut g = Gen::new(seed, &registry);
    g.static_shapes = opts.static_shapes;
    let m = g.module();
    if let Err(e) = qc_ir::verify_module(&m) {
        panic!(
            "generator bug: seed {seed} produced an invalid module:\n{e:?}\n{}",
            qc_ir::print_module(&m, qc_ir::PrintOptions::full())
        );
    }
    m
}

/// Whether a type is one the text form can spell and the verifier accepts (quantized formats valid for
/// their shape, raw minifloats with valid parameters).
pub fn type_is_valid(t: &TensorType) -> bool {
    match &t.elem {
        ElemType::Quant(q) => {
            let shape: Vec<Option<u64>> = t.dims.iter().map(Dim::as_static).collect();
            q.validate().is_ok() && q.validate_for_shape(&shape).is_ok()
        }
        ElemType::Raw(Encoding::Float(m)) => validate_minifloat(m).is_ok(),
        ElemType::Raw(Encoding::Int { bits, .. }) => (1..=8).contains(bits),
        _ => true,
    }
}

const SYMBOLS: &[&str] = &[
    "seq", "b", "n", "batch.1", "$s", "k-2", "0", "_", "N_tokens",
];
const VALUE_HINTS: &[&str] = &[
    "x",
    "x",
    "y",
    "0",
    "1",
    "7",
    "arg0",
    "arg1",
    "arg2",
    "x_1",
    "x_2",
    "y.2",
    "$t",
    "a-b",
    "weird name!",
    "",
    "é",
    "tmp",
    "_",
    "-",
    ".",
    "0_1",
    "arg0_1",
    "return",
    "func.func",
    "module",
];
const FUNC_NAMES: &[&str] = &[
    "main", "f", "f.1", "g_2", "$h", "0", "a-b", "return", "module", "_",
];
const ATTR_NAMES: &[&str] = &[
    "qc.note", "qc.a", "x.y", "_a.b", "qc.flag", "a.1", "z.", "A_B.c_d", "qc.value", "nn.perm",
    "q.x_9",
];
const RES_NAMES: &[&str] = &[
    "w", "blob.1", "r-2", "$r", "0", "_", "external", "dense", "W_q",
];
const NAMED_MINIFLOATS: &[&str] = &[
    "e2m1", "e2m3", "e3m2", "e4m3fn", "e4m3fnuz", "e5m2", "e5m2fnuz",
];
const GENERIC_MINIFLOATS: &[&str] = &["e4m3", "e3m4", "e2m2", "e3m0", "e5m10", "e8m7"];
const STRINGS: &[&str] = &[
    "",
    "hello",
    "quote \" inside",
    "back\\slash",
    "line\nbreak",
    "tab\there",
    "\u{0}nul",
    "\u{1}\u{1f}\u{7f}",
    "\r\n",
    "\u{80}\u{9f}",
    "é日本語",
    "🦀 crab",
    "\u{2028}\u{feff}",
    "}, {-# #-} //",
    "\\\"\\n",
    "dense<1.0>",
    "%x = nn.add",
];

struct Gen<'r> {
    rng: ChaCha8Rng,
    reg: &'r Registry,
    module: Module,
    res_counter: usize,
    static_shapes: bool,
}

/// A function under construction: its values and their types.
struct FnState {
    f: Func,
    vals: Vec<Value>,
}

impl FnState {
    fn ty(&self, v: Value) -> TensorType {
        self.f.ty(v).clone()
    }
}

fn f64_specials() -> Vec<f64> {
    vec![
        0.0,
        -0.0,
        1.0,
        -1.5,
        0.1,
        1.0 / 3.0,
        f64::NAN,
        -f64::NAN,
        f64::from_bits(0x7FF0_0000_0000_0001),
        f64::from_bits(0xFFF4_0000_DEAD_BEEF),
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        5e-324,
        -5e-324,
        1e300,
        1e-300,
        1e15,
        1e16,
        123456789.0,
        1e21,
        448.0,
        6.0,
        57344.0,
        2f64.powi(-127),
        f64::EPSILON,
    ]
}

impl<'r> Gen<'r> {
    fn new(seed: u64, reg: &'r Registry) -> Self {
        Gen {
            rng: ChaCha8Rng::seed_from_u64(seed),
            reg,
            module: Module::default(),
            res_counter: 0,
            static_shapes: false,
        }
    }

    fn def(&self, name: &str) -> &'static OpDef {
        self.reg
            .get(name)
            .unwrap_or_else(|| panic!("op {name} is not registered"))
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        xs.choose(&mut self.rng).expect("non-empty")
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p)
    }

    // ---- module and functions ----

    fn module(mut self) -> Module {
        let nfuncs = self.rng.gen_range(1..=4);
        let mut names: Vec<String> = Vec::new();
        for i in 0..nfuncs {
            let mut name = self.pick(FUNC_NAMES).to_string();
            if names.contains(&name) {
                name = format!("fn{i}");
            }
            names.push(name.clone());
            let f = self.func(name);
            self.module.funcs.push(f);
        }
        // Some resources that nothing refers to.
        if self.chance(0.2) {
            let len = self.rng.gen_range(0..8);
            self.new_resource(len);
        }
        self.module
    }

    fn hint(&mut self) -> Option<String> {
        if self.chance(0.5) {
            Some(self.pick(VALUE_HINTS).to_string())
        } else {
            None
        }
    }

    fn func(&mut self, name: String) -> Func {
        let mut st = FnState {
            f: Func::new(name),
            vals: Vec::new(),
        };
        let nargs = self.rng.gen_range(0..=4);
        for _ in 0..nargs {
            let ty = self.arg_type();
            let hint = self.hint();
            let v = st.f.add_arg(ty, hint.as_deref());
            st.vals.push(v);
        }
        let nops = self.rng.gen_range(0..=12);
        for _ in 0..nops {
            self.op(&mut st);
        }
        let nret = if st.vals.is_empty() {
            0
        } else {
            self.rng.gen_range(0..=3)
        };
        for _ in 0..nret {
            let v = *self.pick(&st.vals);
            st.f.ret.push(v);
            let t = st.ty(v);
            st.f.result_types.push(t);
        }
        st.f
    }

    // ---- types ----

    fn dim(&mut self) -> Dim {
        let kinds = if self.static_shapes { 6 } else { 10 };
        match self.rng.gen_range(0..kinds) {
            0..=5 => Dim::Static(*self.pick(&[1, 1, 2, 3, 4, 5, 8, 0, 16])),
            6 | 7 => Dim::Dynamic,
            _ => Dim::Symbol(Arc::from(*self.pick(SYMBOLS))),
        }
    }

    fn dims(&mut self, rank: usize) -> Vec<Dim> {
        (0..rank).map(|_| self.dim()).collect()
    }

    fn small_static_dims(&mut self) -> Vec<Dim> {
        let rank = self.rng.gen_range(0..=3);
        (0..rank)
            .map(|_| Dim::Static(self.rng.gen_range(0..=4)))
            .collect()
    }

    fn rank(&mut self) -> usize {
        *self.pick(&[0, 1, 1, 2, 2, 2, 3, 3, 4])
    }

    /// A valid minifloat with random widths, bias and policy.
    fn minifloat(&mut self, max_bits: u32) -> Minifloat {
        loop {
            let e = self.rng.gen_range(1..=8u8);
            let m = self.rng.gen_range(0..=10u8);
            if 1 + e as u32 + m as u32 > max_bits {
                continue;
            }
            let mut mf = Minifloat {
                exp_bits: e,
                man_bits: m,
                bias: (1 << (e - 1)) - 1,
                policy: InfNan::Ieee,
            };
            if self.chance(0.5) {
                mf.bias = self.rng.gen_range(-256..=256);
            }
            if self.chance(0.5) {
                mf.policy = *self.pick(&[InfNan::Ieee, InfNan::Fn, InfNan::Fnuz, InfNan::None]);
            }
            if validate_minifloat(&mf).is_ok() {
                return mf;
            }
        }
    }

    fn encoding(&mut self, max_bits: u32) -> Encoding {
        match self.rng.gen_range(0..8) {
            0 => Encoding::from_name(self.pick::<&str>(NAMED_MINIFLOATS)).expect("named minifloat"),
            1 => Encoding::from_name(self.pick::<&str>(GENERIC_MINIFLOATS))
                .filter(|e| e.bits() <= max_bits)
                .unwrap_or(Encoding::E2M1),
            2 | 3 => Encoding::Float(self.minifloat(max_bits)),
            4 => Encoding::Int {
                bits: self.rng.gen_range(1..=8),
                signed: self.chance(0.5),
            },
            5 => Encoding::MxInt8,
            6 => *self.pick(&[Encoding::E8M0, Encoding::UE4M3]),
            _ => *self.pick(&[Encoding::I4, Encoding::I8, Encoding::U4, Encoding::U8]),
        }
    }

    fn scheme(&mut self) -> Scheme {
        match self.rng.gen_range(0..4) {
            0 => Scheme::PerTensor,
            1 => Scheme::PerChannel {
                axis: self.rng.gen_range(-2..=1),
            },
            2 => Scheme::Group {
                size: *self.pick(&[1, 2, 3, 8, 16, 32, 48, 64, 128]),
                axis: *self.pick(&[-1, -1, -1, 0, 1, -2]),
            },
            _ => Scheme::Block {
                rows: *self.pick(&[1, 2, 4, 16]),
                cols: *self.pick(&[1, 2, 8, 16]),
            },
        }
    }

    /// A random valid quantized format: a named one, or random parameters that pass validate().
    fn quant(&mut self) -> QuantType {
        if self.chance(0.4) {
            return self.pick(named_formats()).ty.clone();
        }
        for _ in 0..64 {
            let scale = *self.pick(ScaleType::ALL);
            let rule = if scale == ScaleType::E8M0 {
                *self.pick(&[
                    ScaleRule::Floor,
                    ScaleRule::Ceil,
                    ScaleRule::Rceil,
                    ScaleRule::Even,
                ])
            } else if self.chance(0.95) {
                ScaleRule::Amax
            } else {
                *self.pick(ScaleRule::ALL)
            };
            let mut q = QuantType::new(self.encoding(8), self.scheme(), scale, rule);
            if self.chance(0.3) {
                q.tensor_scale = *self.pick(TensorScale::ALL);
            }
            if self.chance(0.3) {
                q.zero_point = Some(Encoding::Int {
                    bits: self.rng.gen_range(1..=8),
                    signed: self.chance(0.5),
                });
            }
            if self.chance(0.3) {
                q.round = *self.pick(Rounding::ALL);
            }
            if self.chance(0.3) {
                q.sat = *self.pick(Saturation::ALL);
            }
            if self.chance(0.5) {
                q.pack = *self.pick(Packing::ALL);
            }
            if self.chance(0.3) {
                q.convention = *self.pick(Convention::ALL);
            }
            if q.validate().is_ok() {
                return q;
            }
        }
        self.pick(named_formats()).ty.clone()
    }

    /// Dimensions a quantized format is valid for.
    fn dims_for_quant(&mut self, q: &QuantType) -> Vec<Dim> {
        let need = |axis: i32| {
            if axis >= 0 {
                axis as usize + 1
            } else {
                (-axis) as usize
            }
        };
        let min_rank = match q.scheme {
            Scheme::PerTensor => 0,
            Scheme::PerChannel { axis } | Scheme::Group { axis, .. } => need(axis),
            Scheme::Block { .. } => 2,
        };
        let rank = min_rank + self.rng.gen_range(0..=2);
        let mut dims = self.dims(rank);
        let resolve = |axis: i32| {
            if axis >= 0 {
                axis as usize
            } else {
                (rank as i32 + axis) as usize
            }
        };
        let fix = |g: &mut Self, d: &mut Dim, k: u32| {
            if d.as_static().is_some() {
                *d = Dim::Static(k as u64 * g.rng.gen_range(1..=2));
            }
        };
        match q.scheme {
            Scheme::Group { size, axis } => fix(self, &mut dims[resolve(axis)], size),
            Scheme::Block { rows, cols } => {
                fix(self, &mut dims[rank - 2], rows);
                fix(self, &mut dims[rank - 1], cols);
            }
            _ => {}
        }
        dims
    }

    fn raw(&mut self) -> ElemType {
        let enc = match self.rng.gen_range(0..4) {
            0 => {
                let kw = *self.pick(&[
                    "f4E2M1FN",
                    "f6E2M3FN",
                    "f6E3M2FN",
                    "f8E4M3FN",
                    "f8E4M3FNUZ",
                    "f8E5M2",
                    "f8E5M2FNUZ",
                    "f8E4M3",
                    "f8E3M4",
                    "f8E8M0FNU",
                ]);
                return ElemType::from_keyword(kw).expect("MLIR float name");
            }
            1 => Encoding::Float(self.minifloat(16)),
            2 => self.encoding(16),
            _ => *self.pick(&[
                Encoding::UE4M3,
                Encoding::MxInt8,
                Encoding::I4,
                Encoding::U8,
                Encoding::E8M0,
            ]),
        };
        ElemType::Raw(enc)
    }

    fn plain_elem(&mut self) -> ElemType {
        match self.rng.gen_range(0..10) {
            0..=2 => ElemType::F32,
            3 => ElemType::F16,
            4 => ElemType::BF16,
            5 => ElemType::F64,
            6 => ElemType::Int {
                bits: *self.pick(&[1, 8, 16, 32, 64]),
                unsigned: self.chance(0.3),
            },
            7 => ElemType::Int {
                bits: self.rng.gen_range(1..=64),
                unsigned: self.chance(0.5),
            },
            _ => self.raw(),
        }
    }

    fn float_elem(&mut self) -> ElemType {
        self.pick(&[ElemType::F32, ElemType::F16, ElemType::BF16, ElemType::F64])
            .clone()
    }

    fn arg_type(&mut self) -> TensorType {
        if self.chance(0.3) {
            let q = self.quant();
            let dims = self.dims_for_quant(&q);
            return TensorType {
                dims,
                elem: ElemType::Quant(Arc::new(q)),
            };
        }
        let rank = self.rank();
        let dims = self.dims(rank);
        TensorType {
            dims,
            elem: self.plain_elem(),
        }
    }

    /// The inferred type with some dynamic dimensions refined to static or symbolic ones (a declared type
    /// may be more precise than the inferred one); falls back to the inferred type if that is invalid.
    fn refine(&mut self, inferred: TensorType) -> TensorType {
        if self.static_shapes || !self.chance(0.3) {
            return inferred;
        }
        let mut t = inferred.clone();
        for d in &mut t.dims {
            if *d == Dim::Dynamic && self.rng.gen_bool(0.5) {
                *d = self.dim();
            }
        }
        if type_is_valid(&t) {
            t
        } else {
            inferred
        }
    }

    // ---- attributes ----

    fn f64_value(&mut self) -> f64 {
        if self.chance(0.6) {
            *self.pick(&f64_specials())
        } else if self.chance(0.5) {
            f64::from_bits(self.rng.gen())
        } else {
            self.rng.gen_range(-1000.0..1000.0)
        }
    }

    fn i64_value(&mut self) -> i64 {
        match self.rng.gen_range(0..5) {
            0 => *self.pick(&[i64::MIN, i64::MAX, 0, -1, 1, -0]),
            1 => self.rng.gen(),
            _ => self.rng.gen_range(-300..300),
        }
    }

    fn string(&mut self) -> String {
        let n = self.rng.gen_range(1..=3);
        let mut s = String::new();
        for _ in 0..n {
            if self.chance(0.7) {
                s.push_str(self.pick::<&str>(STRINGS));
            } else {
                // Any scalar value, surrogates excepted.
                let c = loop {
                    if let Some(c) = char::from_u32(self.rng.gen_range(0..0x11_0000)) {
                        break c;
                    }
                };
                s.push(c);
                s.push(char::from(self.rng.gen_range(0u8..0x80)));
            }
        }
        s
    }

    fn dense_data(&mut self, elem: &ElemType, n: Option<u64>) -> DenseData {
        let len = match n {
            Some(n) if (2..=12).contains(&n) && self.chance(0.6) => n as usize,
            // A zero-element tensor may hold an empty list (folds produce them).
            Some(0) if self.chance(0.5) => 0,
            _ => 1,
        };
        match elem {
            ElemType::Int { bits: 1, .. } if self.chance(0.7) => {
                DenseData::Bool((0..len).map(|_| self.rng.gen()).collect())
            }
            ElemType::Int { .. } => DenseData::Int((0..len).map(|_| self.i64_value()).collect()),
            _ => {
                let same = self.chance(0.2);
                let first = self.f64_value();
                DenseData::Float(
                    (0..len)
                        .map(|_| if same { first } else { self.f64_value() })
                        .collect(),
                )
            }
        }
    }

    fn any_dense(&mut self) -> DenseData {
        let len = self.rng.gen_range(1..=5);
        match self.rng.gen_range(0..3) {
            0 => DenseData::Float((0..len).map(|_| self.f64_value()).collect()),
            1 => DenseData::Int((0..len).map(|_| self.i64_value()).collect()),
            _ => DenseData::Bool((0..len).map(|_| self.rng.gen()).collect()),
        }
    }

    fn attribute(&mut self, depth: u32) -> Attribute {
        let top = if depth >= 2 { 8 } else { 9 };
        match self.rng.gen_range(0..top) {
            0 => Attribute::Unit,
            1 => Attribute::Bool(self.rng.gen()),
            2 => Attribute::Int(self.i64_value()),
            3 => Attribute::Float(F64Bits(self.f64_value())),
            4 => Attribute::Str(self.string()),
            5 => {
                let t = self.arg_type();
                Attribute::Type(t)
            }
            6 => Attribute::Dense(self.any_dense()),
            7 => {
                // Nested in an array, a dense_resource may name a resource the module lacks (it reparses
                // as an elided one).
                let name = if self.chance(0.5) {
                    let len = self.rng.gen_range(0..6);
                    self.new_resource(len)
                } else {
                    format!("missing_{}", self.rng.gen_range(0..3))
                };
                Attribute::DenseResource(name)
            }
            _ => {
                let n = self.rng.gen_range(0..=4);
                Attribute::Array((0..n).map(|_| self.attribute(depth + 1)).collect())
            }
        }
    }

    /// Random discardable annotations; a top-level dense_resource gets a resource the verifier accepts
    /// for the op's result type.
    fn annotate(&mut self, attrs: &mut Attrs, result: &TensorType) {
        if !self.chance(0.35) {
            return;
        }
        let n = self.rng.gen_range(1..=3);
        for _ in 0..n {
            let name = self.pick(ATTR_NAMES).to_string();
            let value = if self.chance(0.08) {
                let len = match (result.elem.byte_size(), result.num_elements()) {
                    (Some(b), Some(n)) if n * (b as u64) <= 256 => (n * b as u64) as usize,
                    (Some(_), Some(_)) => continue,
                    _ => self.rng.gen_range(0..6),
                };
                Attribute::DenseResource(self.new_resource(len))
            } else {
                match self.attribute(0) {
                    // Top-level resource references are checked against the result type: handled above.
                    Attribute::DenseResource(_) => Attribute::Unit,
                    a => a,
                }
            };
            attrs.set(name, value);
        }
    }

    fn new_resource(&mut self, len: usize) -> String {
        let base = self.pick(RES_NAMES).to_string();
        let name = if self.module.resources.get(&base).is_none() {
            base
        } else {
            self.res_counter += 1;
            format!("{base}{}", self.res_counter)
        };
        let data: Vec<u8> = (0..len).map(|_| self.rng.gen()).collect();
        let align = 1u32 << self.rng.gen_range(0..=6);
        self.module.resources.insert(
            name.clone(),
            Blob::Owned {
                data: data.into(),
                align,
            },
        );
        name
    }

    // ---- ops ----

    fn emit(
        &mut self,
        st: &mut FnState,
        name: &str,
        operands: Vec<Value>,
        result: TensorType,
        mut attrs: Attrs,
    ) {
        debug_assert!(type_is_valid(&result), "{result}");
        self.annotate(&mut attrs, &result);
        let def = self.def(name);
        let r =
            st.f.push_op(def, operands, vec![result], attrs, Location::Unknown)[0];
        if let Some(h) = self.hint() {
            st.f.value_mut(r).name = Some(sanitize_name(&h)).filter(|s| !s.is_empty());
        }
        st.vals.push(r);
    }

    /// A value satisfying `pred`, if the function has one.
    fn value_where(&mut self, st: &FnState, pred: impl Fn(&TensorType) -> bool) -> Option<Value> {
        let c: Vec<Value> = st
            .vals
            .iter()
            .copied()
            .filter(|&v| pred(st.f.ty(v)))
            .collect();
        c.choose(&mut self.rng).copied()
    }

    fn op(&mut self, st: &mut FnState) {
        let numeric = |t: &TensorType| t.elem.is_float() || matches!(t.elem, ElemType::Int { .. });
        let kind = if st.vals.is_empty() {
            0
        } else {
            self.rng.gen_range(0..14)
        };
        match kind {
            0 | 1 => self.constant(st),
            2 => {
                let Some(a) = self.value_where(st, numeric) else {
                    return self.constant(st);
                };
                let ta = st.ty(a);
                // The other operand: a value of the same type, a broadcast constant, or itself.
                let b = match self.rng.gen_range(0..3) {
                    0 => self.value_where(st, |t| *t == ta).unwrap_or(a),
                    1 => {
                        let dims = if self.chance(0.5) || ta.rank() == 0 {
                            vec![]
                        } else {
                            vec![Dim::Static(1)]
                        };
                        let t = TensorType {
                            dims,
                            elem: ta.elem.clone(),
                        };
                        self.constant_of(st, t)
                    }
                    _ => a,
                };
                let tb = st.ty(b);
                let dims = qc_nn::shape::broadcast(&ta.dims, &tb.dims).expect("broadcastable");
                let op = *self.pick(&["nn.add", "nn.sub", "nn.mul", "nn.div", "nn.max", "nn.min"]);
                let result = self.refine(TensorType {
                    dims,
                    elem: ta.elem.clone(),
                });
                self.emit(st, op, vec![a, b], result, Attrs::new());
            }
            3 => {
                let Some(a) = self.value_where(st, numeric) else {
                    return self.constant(st);
                };
                let t = st.ty(a);
                let op = if t.elem.is_float() {
                    *self.pick(&[
                        "nn.neg",
                        "nn.relu",
                        "nn.exp",
                        "nn.sqrt",
                        "nn.tanh",
                        "nn.sigmoid",
                    ])
                } else {
                    "nn.neg"
                };
                let result = self.refine(t);
                self.emit(st, op, vec![a], result, Attrs::new());
            }
            4 => {
                let a = *self.pick(&st.vals);
                let result = self.refine(st.ty(a));
                self.emit(st, "nn.identity", vec![a], result, Attrs::new());
            }
            5 => {
                let a = *self.pick(&st.vals);
                let t = st.ty(a);
                let mut perm: Vec<i64> = (0..t.rank() as i64).collect();
                perm.shuffle(&mut self.rng);
                let dims = qc_nn::shape::transpose(&t.dims, &perm).expect("permutation");
                let result = TensorType {
                    dims,
                    elem: t.elem.clone(),
                };
                if !type_is_valid(&result) {
                    return;
                }
                let result = self.refine(result);
                let attrs: Attrs = [(
                    "perm",
                    Attribute::Array(perm.into_iter().map(Attribute::Int).collect()),
                )]
                .into_iter()
                .collect();
                self.emit(st, "nn.transpose", vec![a], result, attrs);
            }
            6 => self.reshape(st),
            7 => {
                let a = *self.pick(&st.vals);
                let rank = st.ty(a).rank() as u64;
                let result = TensorType::new(
                    &[rank],
                    ElemType::Int {
                        bits: 64,
                        unsigned: false,
                    },
                );
                self.emit(st, "nn.shape", vec![a], result, Attrs::new());
            }
            8 => {
                let Some(a) = self.value_where(st, |t| t.rank() > 0) else {
                    return self.constant(st);
                };
                let t = st.ty(a);
                let n = self.rng.gen_range(1..=3);
                let operands: Vec<Value> = (0..n)
                    .map(|_| self.value_where(st, |u| *u == t).unwrap_or(a))
                    .collect();
                let rank = t.rank() as i64;
                let axis = self.rng.gen_range(-rank..rank);
                let types: Vec<TensorType> = operands.iter().map(|&v| st.ty(v)).collect();
                let refs: Vec<&TensorType> = types.iter().collect();
                let dims = qc_nn::shape::concat(&refs, axis).expect("concat");
                let result = TensorType {
                    dims,
                    elem: t.elem.clone(),
                };
                if !type_is_valid(&result) {
                    return;
                }
                let result = self.refine(result);
                let attrs: Attrs = [("axis", Attribute::Int(axis))].into_iter().collect();
                self.emit(st, "nn.concat", operands, result, attrs);
            }
            9 => {
                let Some(a) = self.value_where(st, numeric) else {
                    return self.constant(st);
                };
                let t = st.ty(a);
                let mut attrs = Attrs::new();
                let rank = t.rank() as i64;
                let axes: Vec<i64> = if self.chance(0.3) {
                    Vec::new()
                } else {
                    let mut all: Vec<i64> = (0..rank).collect();
                    all.shuffle(&mut self.rng);
                    let k = self.rng.gen_range(0..=all.len());
                    let neg: Vec<bool> = (0..k).map(|_| self.rng.gen_bool(0.5)).collect();
                    all[..k]
                        .iter()
                        .zip(neg)
                        .map(|(&x, n)| if n { x - rank } else { x })
                        .collect()
                };
                attrs.set("keepdims", Attribute::Int(self.chance(0.5) as i64));
                let axes_v = self.i64_const(st, &axes);
                let Some(result) = self.infer_nn(st, qc_nn::NnOp::ReduceSum, &[a, axes_v], &attrs)
                else {
                    return;
                };
                let result = self.refine(result);
                self.emit(st, "nn.reduce_sum", vec![a, axes_v], result, attrs);
            }
            10 => {
                let Some(a) = self.value_where(st, |t| numeric(t) && t.rank() >= 2) else {
                    return self.constant(st);
                };
                let t = st.ty(a);
                let k = t.dims[t.rank() - 1].clone();
                let n = self.dim();
                let b = self.constant_of(
                    st,
                    TensorType {
                        dims: vec![k, n],
                        elem: t.elem.clone(),
                    },
                );
                let dims = qc_nn::shape::matmul(&t.dims, &st.ty(b).dims, false).expect("matmul");
                let result = self.refine(TensorType {
                    dims,
                    elem: t.elem.clone(),
                });
                self.emit(st, "nn.matmul", vec![a, b], result, Attrs::new());
            }
            11 => {
                let Some(a) = self.value_where(st, numeric) else {
                    return self.constant(st);
                };
                let t = st.ty(a);
                let elem = loop {
                    let e = self.plain_elem();
                    if e.is_float() || matches!(e, ElemType::Int { .. }) {
                        break e;
                    }
                };
                let result = self.refine(t.with_elem(elem));
                self.emit(st, "nn.cast", vec![a], result, Attrs::new());
            }
            12 => {
                let Some(a) = self.value_where(st, |t| t.elem.is_float()) else {
                    return self.constant(st);
                };
                let t = st.ty(a);
                let mut q = None;
                for _ in 0..16 {
                    let c = t.with_elem(ElemType::Quant(Arc::new(self.quant())));
                    if type_is_valid(&c) {
                        q = Some(c);
                        break;
                    }
                }
                let result = q.unwrap_or_else(|| {
                    let fp8 = named_formats()
                        .iter()
                        .find(|f| f.name == "fp8_e4m3")
                        .expect("fp8_e4m3");
                    t.with_elem(ElemType::Quant(Arc::new(fp8.ty.clone())))
                });
                let mut attrs = Attrs::new();
                if self.chance(0.3) {
                    attrs.set("seed", Attribute::Int(self.i64_value()));
                }
                self.emit(st, "quant.quantize", vec![a], result, attrs);
            }
            _ => {
                let Some(a) = self.value_where(st, |t| t.elem.as_quant().is_some()) else {
                    return self.constant(st);
                };
                let elem = self.float_elem();
                let result = st.ty(a).with_elem(elem);
                self.emit(st, "quant.dequantize", vec![a], result, Attrs::new());
            }
        }
    }

    fn reshape(&mut self, st: &mut FnState) {
        let a = *self.pick(&st.vals);
        let t = st.ty(a);
        let shape: Vec<i64> = match t.num_elements() {
            Some(n) if self.static_shapes || self.chance(0.7) => {
                // A factorization of n, maybe with a -1.
                let mut rest = n;
                let mut s = Vec::new();
                for f in [2u64, 3, 2, 5] {
                    if rest > 0 && rest % f == 0 && self.rng.gen_bool(0.5) {
                        s.push(f as i64);
                        rest /= f;
                    }
                }
                s.push(rest as i64);
                s.shuffle(&mut self.rng);
                if !self.static_shapes && self.chance(0.3) {
                    let i = self.rng.gen_range(0..s.len());
                    s[i] = -1;
                }
                s
            }
            Some(_) => (0..self.rng.gen_range(1..=3)).map(|_| -1).collect(),
            None => (0..self.rng.gen_range(0..=3))
                .map(|_| *self.pick(&[-1, 1, 2, 4, 0]))
                .collect(),
        };
        let shape_v = self.i64_const(st, &shape);
        let attrs = Attrs::new();
        let Some(result) = self.infer_nn(st, qc_nn::NnOp::Reshape, &[a, shape_v], &attrs) else {
            return;
        };
        if !type_is_valid(&result) {
            return;
        }
        let result = self.refine(result);
        self.emit(st, "nn.reshape", vec![a, shape_v], result, attrs);
    }

    /// A `qc.constant` of a random type.
    fn constant(&mut self, st: &mut FnState) {
        let t = if self.chance(0.15) {
            let q = self.quant();
            let dims = self.dims_for_quant(&q);
            TensorType {
                dims,
                elem: ElemType::Quant(Arc::new(q)),
            }
        } else {
            let dims = if self.chance(0.7) {
                self.small_static_dims()
            } else {
                let r = self.rank();
                self.dims(r)
            };
            TensorType {
                dims,
                elem: self.plain_elem(),
            }
        };
        self.constant_of(st, t);
    }

    /// A `qc.constant` holding exactly `values` as a 1-D i64 tensor (a shape, axes, ...).
    fn i64_const(&mut self, st: &mut FnState, values: &[i64]) -> Value {
        let t = TensorType::new(
            &[values.len() as u64],
            ElemType::Int {
                bits: 64,
                unsigned: false,
            },
        );
        let attrs: Attrs = [(
            "value",
            Attribute::Dense(qc_ir::DenseData::Int(values.to_vec()).canonical()),
        )]
        .into_iter()
        .collect();
        let r = st.f.push_op(
            self.def("qc.constant"),
            vec![],
            vec![t],
            attrs,
            Location::Unknown,
        )[0];
        st.vals.push(r);
        r
    }

    /// The result type qc-nn infers for `op` on `operands` (constants among them visible to inference).
    fn infer_nn(
        &self,
        st: &FnState,
        op: qc_nn::NnOp,
        operands: &[Value],
        attrs: &Attrs,
    ) -> Option<TensorType> {
        let consts = qc_ir::ops::dense_constants(&st.f);
        let cx = qc_nn::infer::InferCx {
            types: operands.iter().map(|&v| st.f.ty(v)).collect(),
            attrs,
            consts: operands.iter().map(|v| consts.get(v).copied()).collect(),
            result_elem: None,
        };
        qc_nn::infer::infer(op, &cx).ok()?.into_iter().next()
    }

    /// A `qc.constant` of type `t`: dense data when the element allows it, else (or sometimes) a resource.
    fn constant_of(&mut self, st: &mut FnState, t: TensorType) -> Value {
        let dense_ok = t.elem.as_quant().is_none();
        let bytes = match (t.elem.byte_size(), t.num_elements()) {
            (Some(b), Some(n)) => n
                .checked_mul(b as u64)
                .filter(|&x| x <= 4096)
                .map(|x| x as usize),
            (Some(_), None) => None,
            (None, _) => Some(self.rng.gen_range(0..10)),
        };
        let value = match bytes {
            Some(len) if !dense_ok || self.chance(0.25) => {
                // Reuse an existing resource of the right size now and then.
                let reuse: Vec<String> = self
                    .module
                    .resources
                    .iter()
                    .filter(|(_, b)| b.bytes().map(|d| d.len()) == Some(len))
                    .map(|(k, _)| k.to_string())
                    .collect();
                let name = match reuse.choose(&mut self.rng) {
                    Some(n) if self.rng.gen_bool(0.3) => n.clone(),
                    _ => self.new_resource(len),
                };
                Attribute::DenseResource(name)
            }
            _ if dense_ok => Attribute::Dense(self.dense_data(&t.elem, t.num_elements())),
            _ => {
                // A quantized type whose byte size is unknown to the verifier: any resource works.
                Attribute::DenseResource(self.new_resource(3))
            }
        };
        let attrs: Attrs = [("value", value)].into_iter().collect();
        self.emit(st, "qc.constant", vec![], t, attrs);
        *st.vals.last().expect("just pushed")
    }
}
