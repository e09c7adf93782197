//! A thin typed layer over melior for emitting StableHLO in MLIR's generic form: every value carries its
//! static shape and element type, and each helper appends one op (or a few) to the function's block.
//!
//! StableHLO's own attributes (`#stablehlo.dot<...>`, `#stablehlo<comparison_direction LT>`) are parsed
//! by MLIR as opaque attributes of the unregistered `stablehlo` dialect and printed back verbatim, so the
//! text is what StableHLO's parser expects.

use melior::ir::attribute::DenseElementsAttribute;
use melior::ir::operation::OperationBuilder;
use melior::ir::r#type::RankedTensorType;
use melior::ir::{
    Attribute, Block, BlockLike, Identifier, Location, Region, RegionLike, Type, Value,
};
use melior::Context;
use qc_ir::types::ElemType;

/// Errors inside the builders: one sentence, located by the caller.
pub(crate) type R<T> = Result<T, String>;

/// Element types of emitted tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum E {
    F16,
    BF16,
    F32,
    F64,
    /// Signless integer of N bits (`i1` for booleans); signed arithmetic.
    I(u8),
    /// Unsigned integer of N bits.
    U(u8),
}

impl E {
    pub(crate) fn mlir(self) -> String {
        match self {
            E::F16 => "f16".into(),
            E::BF16 => "bf16".into(),
            E::F32 => "f32".into(),
            E::F64 => "f64".into(),
            E::I(n) => format!("i{n}"),
            E::U(n) => format!("ui{n}"),
        }
    }

    pub(crate) fn is_float(self) -> bool {
        matches!(self, E::F16 | E::BF16 | E::F32 | E::F64)
    }

    pub(crate) fn bits(self) -> u32 {
        match self {
            E::F16 | E::BF16 => 16,
            E::F32 => 32,
            E::F64 => 64,
            E::I(n) | E::U(n) => n as u32,
        }
    }

    /// The emitted element type of a qc element type (floats and integers of 1, 8, 16, 32 or 64 bits).
    pub(crate) fn of(e: &ElemType) -> R<E> {
        Ok(match e {
            ElemType::F16 => E::F16,
            ElemType::BF16 => E::BF16,
            ElemType::F32 => E::F32,
            ElemType::F64 => E::F64,
            ElemType::Int { bits, unsigned } if matches!(bits, 1 | 8 | 16 | 32 | 64) => {
                if *unsigned && *bits > 1 {
                    E::U(*bits)
                } else {
                    E::I(*bits)
                }
            }
            e => return Err(format!("tensors of {e} elements are not supported")),
        })
    }
}

/// A lowered tensor value.
#[derive(Clone, Copy)]
pub(crate) struct T<'c, 'b> {
    pub v: Value<'c, 'b>,
    pub e: E,
    shape_id: ShapeRef,
}

/// Shapes are stored in the builder's arena so that [`T`] stays `Copy`.
#[derive(Clone, Copy)]
struct ShapeRef(usize);

/// Comparison directions of `stablehlo.compare`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// The reducers of `stablehlo.reduce` / `reduce_window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Red {
    Add,
    Mul,
    Max,
    Min,
}

/// The builder: a context, the block ops are appended to, and the shape arena.
pub(crate) struct B<'c, 'b> {
    pub ctx: &'c Context,
    pub block: &'b Block<'c>,
    pub loc: Location<'c>,
    shapes: std::cell::RefCell<Vec<Vec<u64>>>,
}

pub(crate) fn ints(v: &[i64]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `array<i64: ...>`.
pub(crate) fn arr(v: &[i64]) -> String {
    if v.is_empty() {
        "array<i64>".into()
    } else {
        format!("array<i64: {}>", ints(v))
    }
}

/// `[a, b]` as used inside `#stablehlo.*<...>` attributes.
fn list(v: &[i64]) -> String {
    format!("[{}]", ints(v))
}

impl<'c, 'b> B<'c, 'b> {
    pub(crate) fn new(ctx: &'c Context, block: &'b Block<'c>, loc: Location<'c>) -> Self {
        B {
            ctx,
            block,
            loc,
            shapes: Default::default(),
        }
    }

    pub(crate) fn shape(&self, t: &T) -> Vec<u64> {
        self.shapes.borrow()[t.shape_id.0].clone()
    }

    pub(crate) fn rank(&self, t: &T) -> usize {
        self.shapes.borrow()[t.shape_id.0].len()
    }

    pub(crate) fn wrap(&self, v: Value<'c, 'b>, shape: &[u64], e: E) -> T<'c, 'b> {
        let mut s = self.shapes.borrow_mut();
        s.push(shape.to_vec());
        T {
            v,
            e,
            shape_id: ShapeRef(s.len() - 1),
        }
    }

    pub(crate) fn elem_type(&self, e: E) -> R<Type<'c>> {
        Type::parse(self.ctx, &e.mlir())
            .ok_or_else(|| format!("MLIR does not know the type {}", e.mlir()))
    }

    pub(crate) fn ty(&self, shape: &[u64], e: E) -> R<Type<'c>> {
        Ok(RankedTensorType::new(shape, self.elem_type(e)?, None).into())
    }

    fn attr(&self, s: &str) -> R<Attribute<'c>> {
        Attribute::parse(self.ctx, s)
            .ok_or_else(|| format!("MLIR cannot parse the attribute `{s}`"))
    }

    /// Appends `name(operands) {attrs}` with one result of `shape` x `e`.
    pub(crate) fn op(
        &self,
        name: &str,
        operands: &[T<'c, 'b>],
        attrs: &[(&str, String)],
        shape: &[u64],
        e: E,
    ) -> R<T<'c, 'b>> {
        let r = self.op_regions(name, operands, attrs, Vec::new(), &[(shape.to_vec(), e)])?;
        Ok(r[0])
    }

    /// Appends an op with regions and any number of results.
    pub(crate) fn op_regions(
        &self,
        name: &str,
        operands: &[T<'c, 'b>],
        attrs: &[(&str, String)],
        regions: Vec<Region<'c>>,
        results: &[(Vec<u64>, E)],
    ) -> R<Vec<T<'c, 'b>>> {
        let mut named = Vec::with_capacity(attrs.len());
        for (k, v) in attrs {
            named.push((Identifier::new(self.ctx, k), self.attr(v)?));
        }
        let tys: Vec<Type> = results
            .iter()
            .map(|(s, e)| self.ty(s, *e))
            .collect::<R<_>>()?;
        let vals: Vec<Value> = operands.iter().map(|t| t.v).collect();
        let op = OperationBuilder::new(name, self.loc)
            .add_operands(&vals)
            .add_attributes(&named)
            .add_regions_vec(regions)
            .add_results(&tys)
            .build()
            .map_err(|e| format!("building {name} failed: {e}"))?;
        let op = self.block.append_operation(op);
        let mut out = Vec::new();
        for (i, (s, e)) in results.iter().enumerate() {
            let v: Value = op
                .result(i)
                .map_err(|e| format!("{name} has no result {i}: {e}"))?
                .into();
            out.push(self.wrap(v, s, *e));
        }
        Ok(out)
    }

    /// A constant from little-endian element bytes (`bytes` holds every element, or one for a splat).
    pub(crate) fn constant_bytes(&self, shape: &[u64], e: E, bytes: &[u8]) -> R<T<'c, 'b>> {
        let n: u64 = shape.iter().product();
        let ty = self.ty(shape, e)?;
        let attr: Attribute = if e == E::I(1) {
            if bytes.len() as u64 != n && bytes.len() != 1 {
                return Err(format!("{} bytes for {n} booleans", bytes.len()));
            }
            if bytes.len() == 1 && n != 1 {
                DenseElementsAttribute::bool_splat(ty, bytes[0] != 0).into()
            } else {
                let v: Vec<i32> = bytes.iter().map(|&b| (b != 0) as i32).collect();
                DenseElementsAttribute::bool_values(ty, &v).into()
            }
        } else {
            let size = (e.bits() / 8) as u64;
            if bytes.len() as u64 != n * size && bytes.len() as u64 != size {
                return Err(format!(
                    "{} bytes cannot hold {n} elements of {}",
                    bytes.len(),
                    e.mlir()
                ));
            }
            if n == 0 {
                // An empty tensor: MLIR wants an empty list, not an empty buffer.
                self.attr(&format!(
                    "dense<> : tensor<{}x{}>",
                    dims_text(shape),
                    e.mlir()
                ))?
            } else {
                DenseElementsAttribute::raw_buffer(ty, bytes).into()
            }
        };
        let op = OperationBuilder::new("stablehlo.constant", self.loc)
            .add_attributes(&[(Identifier::new(self.ctx, "value"), attr)])
            .add_results(&[ty])
            .build()
            .map_err(|e| format!("building a constant failed: {e}"))?;
        let v: Value = self
            .block
            .append_operation(op)
            .result(0)
            .map_err(|e| e.to_string())?
            .into();
        Ok(self.wrap(v, shape, e))
    }

    /// A splat constant of value `x` (converted to `e`: floats round to nearest, integers truncate).
    pub(crate) fn splat(&self, shape: &[u64], e: E, x: f64) -> R<T<'c, 'b>> {
        let bytes = scalar_bytes(e, x, x as i64);
        self.constant_bytes(shape, e, &bytes)
    }

    /// A splat integer constant.
    pub(crate) fn splat_i(&self, shape: &[u64], e: E, x: i64) -> R<T<'c, 'b>> {
        let bytes = scalar_bytes(e, x as f64, x);
        self.constant_bytes(shape, e, &bytes)
    }

    /// A splat of the same shape and type as `like`.
    pub(crate) fn full(&self, like: &T<'c, 'b>, x: f64) -> R<T<'c, 'b>> {
        self.splat(&self.shape(like), like.e, x)
    }

    /// A splat integer of the same shape and type as `like`.
    pub(crate) fn full_i(&self, like: &T<'c, 'b>, x: i64) -> R<T<'c, 'b>> {
        self.splat_i(&self.shape(like), like.e, x)
    }

    fn same(&self, a: &T, b: &T, what: &str) -> R<()> {
        let (sa, sb) = (self.shape(a), self.shape(b));
        if sa != sb || a.e != b.e {
            return Err(format!(
                "{what}: operands tensor<{}x{}> and tensor<{}x{}> differ (a bug in the lowering)",
                dims_text(&sa),
                a.e.mlir(),
                dims_text(&sb),
                b.e.mlir()
            ));
        }
        Ok(())
    }

    /// An elementwise binary op on operands of one shape and type.
    pub(crate) fn bin(&self, name: &str, a: T<'c, 'b>, b: T<'c, 'b>) -> R<T<'c, 'b>> {
        self.same(&a, &b, name)?;
        self.op(name, &[a, b], &[], &self.shape(&a), a.e)
    }

    /// An elementwise unary op.
    pub(crate) fn un(&self, name: &str, a: T<'c, 'b>) -> R<T<'c, 'b>> {
        self.op(name, &[a], &[], &self.shape(&a), a.e)
    }

    pub(crate) fn add(&self, a: T<'c, 'b>, b: T<'c, 'b>) -> R<T<'c, 'b>> {
        self.bin("stablehlo.add", a, b)
    }
    pub(crate) fn sub(&self, a: T<'c, 'b>, b: T<'c, 'b>) -> R<T<'c, 'b>> {
        self.bin("stablehlo.subtract", a, b)
    }
    pub(crate) fn mul(&self, a: T<'c, 'b>, b: T<'c, 'b>) -> R<T<'c, 'b>> {
        self.bin("stablehlo.multiply", a, b)
    }
    pub(crate) fn div(&self, a: T<'c, 'b>, b: T<'c, 'b>) -> R<T<'c, 'b>> {
        self.bin("stablehlo.divide", a, b)
    }
    pub(crate) fn max(&self, a: T<'c, 'b>, b: T<'c, 'b>) -> R<T<'c, 'b>> {
        self.bin("stablehlo.maximum", a, b)
    }
    pub(crate) fn min(&self, a: T<'c, 'b>, b: T<'c, 'b>) -> R<T<'c, 'b>> {
        self.bin("stablehlo.minimum", a, b)
    }
    pub(crate) fn and(&self, a: T<'c, 'b>, b: T<'c, 'b>) -> R<T<'c, 'b>> {
        self.bin("stablehlo.and", a, b)
    }
    pub(crate) fn or(&self, a: T<'c, 'b>, b: T<'c, 'b>) -> R<T<'c, 'b>> {
        self.bin("stablehlo.or", a, b)
    }

    /// `a op x` for a scalar constant `x` (broadcast to `a`).
    pub(crate) fn bin_c(&self, name: &str, a: T<'c, 'b>, x: f64) -> R<T<'c, 'b>> {
        let c = self.full(&a, x)?;
        self.bin(name, a, c)
    }

    /// `a / x` for a constant `x`, computed as a true IEEE division: the divisor passes an
    /// `optimization_barrier`, so that XLA does not rewrite the division into a multiplication by the
    /// rounded reciprocal (which differs in the last bit).
    pub(crate) fn div_c(&self, a: T<'c, 'b>, x: f64) -> R<T<'c, 'b>> {
        let c = self.full(&a, x)?;
        let c = self.barrier(c)?;
        self.div(a, c)
    }

    /// `a / b` where `b` may be a compile-time constant for XLA: a true IEEE division (see [`B::div_c`]).
    pub(crate) fn div_exact(&self, a: T<'c, 'b>, b: T<'c, 'b>) -> R<T<'c, 'b>> {
        let b = self.barrier(b)?;
        self.div(a, b)
    }

    /// `stablehlo.optimization_barrier`: the value itself, opaque to XLA's simplifier.
    pub(crate) fn barrier(&self, a: T<'c, 'b>) -> R<T<'c, 'b>> {
        self.op(
            "stablehlo.optimization_barrier",
            &[a],
            &[],
            &self.shape(&a),
            a.e,
        )
    }

    /// `a op x` for an integer constant `x`.
    pub(crate) fn bin_ci(&self, name: &str, a: T<'c, 'b>, x: i64) -> R<T<'c, 'b>> {
        let c = self.full_i(&a, x)?;
        self.bin(name, a, c)
    }

    pub(crate) fn convert(&self, a: T<'c, 'b>, e: E) -> R<T<'c, 'b>> {
        if a.e == e {
            return Ok(a);
        }
        self.op("stablehlo.convert", &[a], &[], &self.shape(&a), e)
    }

    /// Reinterprets the bits of each element as another type of the same width.
    pub(crate) fn bitcast(&self, a: T<'c, 'b>, e: E) -> R<T<'c, 'b>> {
        self.op("stablehlo.bitcast_convert", &[a], &[], &self.shape(&a), e)
    }

    pub(crate) fn reshape(&self, a: T<'c, 'b>, shape: &[u64]) -> R<T<'c, 'b>> {
        if self.shape(&a) == shape {
            return Ok(a);
        }
        let (n, m): (u64, u64) = (self.shape(&a).iter().product(), shape.iter().product());
        if n != m {
            return Err(format!(
                "cannot reshape {} elements to {}",
                n,
                dims_text(shape)
            ));
        }
        self.op("stablehlo.reshape", &[a], &[], shape, a.e)
    }

    pub(crate) fn transpose(&self, a: T<'c, 'b>, perm: &[i64]) -> R<T<'c, 'b>> {
        if perm.iter().enumerate().all(|(i, &p)| p == i as i64) {
            return Ok(a);
        }
        let s = self.shape(&a);
        let out: Vec<u64> = perm.iter().map(|&p| s[p as usize]).collect();
        self.op(
            "stablehlo.transpose",
            &[a],
            &[("permutation", arr(perm))],
            &out,
            a.e,
        )
    }

    /// `broadcast_in_dim`: operand dimension i becomes result dimension `dims[i]`.
    pub(crate) fn bcast_dims(&self, a: T<'c, 'b>, shape: &[u64], dims: &[i64]) -> R<T<'c, 'b>> {
        if self.shape(&a) == shape && dims.iter().enumerate().all(|(i, &d)| d == i as i64) {
            return Ok(a);
        }
        self.op(
            "stablehlo.broadcast_in_dim",
            &[a],
            &[("broadcast_dimensions", arr(dims))],
            shape,
            a.e,
        )
    }

    /// NumPy broadcasting of `a` to `shape` (dimensions aligned on the right).
    pub(crate) fn bcast(&self, a: T<'c, 'b>, shape: &[u64]) -> R<T<'c, 'b>> {
        let r = self.rank(&a);
        if r > shape.len() {
            return Err(format!(
                "cannot broadcast a rank-{r} tensor to {}",
                dims_text(shape)
            ));
        }
        let off = shape.len() - r;
        let dims: Vec<i64> = (off..shape.len()).map(|d| d as i64).collect();
        self.bcast_dims(a, shape, &dims)
    }

    pub(crate) fn compare(&self, a: T<'c, 'b>, b: T<'c, 'b>, c: Cmp) -> R<T<'c, 'b>> {
        self.same(&a, &b, "compare")?;
        let dir = match c {
            Cmp::Eq => "EQ",
            Cmp::Ne => "NE",
            Cmp::Lt => "LT",
            Cmp::Le => "LE",
            Cmp::Gt => "GT",
            Cmp::Ge => "GE",
        };
        let kind = match a.e {
            e if e.is_float() => "FLOAT",
            E::U(_) | E::I(1) => "UNSIGNED",
            _ => "SIGNED",
        };
        self.op(
            "stablehlo.compare",
            &[a, b],
            &[
                (
                    "comparison_direction",
                    format!("#stablehlo<comparison_direction {dir}>"),
                ),
                (
                    "compare_type",
                    format!("#stablehlo<comparison_type {kind}>"),
                ),
            ],
            &self.shape(&a),
            E::I(1),
        )
    }

    /// `a cmp x` for a constant `x`.
    pub(crate) fn compare_c(&self, a: T<'c, 'b>, x: f64, c: Cmp) -> R<T<'c, 'b>> {
        let k = self.full(&a, x)?;
        self.compare(a, k, c)
    }

    /// `a cmp x` for an integer constant `x`.
    pub(crate) fn compare_ci(&self, a: T<'c, 'b>, x: i64, c: Cmp) -> R<T<'c, 'b>> {
        let k = self.full_i(&a, x)?;
        self.compare(a, k, c)
    }

    pub(crate) fn select(&self, c: T<'c, 'b>, a: T<'c, 'b>, b: T<'c, 'b>) -> R<T<'c, 'b>> {
        self.same(&a, &b, "select")?;
        self.op("stablehlo.select", &[c, a, b], &[], &self.shape(&a), a.e)
    }

    pub(crate) fn iota(&self, shape: &[u64], dim: usize, e: E) -> R<T<'c, 'b>> {
        self.op(
            "stablehlo.iota",
            &[],
            &[("iota_dimension", format!("{dim} : i64"))],
            shape,
            e,
        )
    }

    /// A region `^bb0(%a, %b): return a <red> b` over scalars of `e`.
    fn reducer(&self, red: Red, e: E) -> R<Region<'c>> {
        let st = self.ty(&[], e)?;
        let blk = Block::new(&[(st, self.loc), (st, self.loc)]);
        let name = match red {
            Red::Add => "stablehlo.add",
            Red::Mul => "stablehlo.multiply",
            Red::Max => "stablehlo.maximum",
            Red::Min => "stablehlo.minimum",
        };
        let (x, y): (Value, Value) = (
            blk.argument(0).map_err(|e| e.to_string())?.into(),
            blk.argument(1).map_err(|e| e.to_string())?.into(),
        );
        let op = OperationBuilder::new(name, self.loc)
            .add_operands(&[x, y])
            .add_results(&[st])
            .build()
            .map_err(|e| e.to_string())?;
        let r: Value = blk
            .append_operation(op)
            .result(0)
            .map_err(|e| e.to_string())?
            .into();
        let ret = OperationBuilder::new("stablehlo.return", self.loc)
            .add_operands(&[r])
            .build()
            .map_err(|e| e.to_string())?;
        blk.append_operation(ret);
        let region = Region::new();
        region.append_block(blk);
        Ok(region)
    }

    /// The reducer's identity for `e`.
    pub(crate) fn init(&self, red: Red, e: E) -> R<T<'c, 'b>> {
        if e.is_float() {
            let x = match red {
                Red::Add => 0.0,
                Red::Mul => 1.0,
                Red::Max => f64::NEG_INFINITY,
                Red::Min => f64::INFINITY,
            };
            self.splat(&[], e, x)
        } else {
            let (lo, hi) = int_range(e);
            let x = match red {
                Red::Add => 0,
                Red::Mul => 1,
                Red::Max => lo,
                Red::Min => hi,
            };
            self.splat_i(&[], e, x)
        }
    }

    /// Reduces `a` over `dims` (removed from the shape).
    pub(crate) fn reduce(&self, a: T<'c, 'b>, dims: &[usize], red: Red) -> R<T<'c, 'b>> {
        if dims.is_empty() {
            return Ok(a);
        }
        let s = self.shape(&a);
        let out: Vec<u64> = (0..s.len())
            .filter(|d| !dims.contains(d))
            .map(|d| s[d])
            .collect();
        let init = self.init(red, a.e)?;
        let mut sorted: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let r = self.op_regions(
            "stablehlo.reduce",
            &[a, init],
            &[("dimensions", arr(&sorted))],
            vec![self.reducer(red, a.e)?],
            &[(out, a.e)],
        )?;
        Ok(r[0])
    }

    /// `reduce_window` with explicit padding (`pads[d] = (low, high)`); `init` fills the padding.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reduce_window(
        &self,
        a: T<'c, 'b>,
        init: T<'c, 'b>,
        red: Red,
        window: &[i64],
        strides: &[i64],
        dilations: &[i64],
        pads: &[(i64, i64)],
        out: &[u64],
    ) -> R<T<'c, 'b>> {
        let r = self.op_regions(
            "stablehlo.reduce_window",
            &[a, init],
            &[
                ("window_dimensions", arr(window)),
                ("window_strides", arr(strides)),
                ("window_dilations", arr(dilations)),
                ("padding", pads_attr(pads)),
            ],
            vec![self.reducer(red, a.e)?],
            &[(out.to_vec(), a.e)],
        )?;
        Ok(r[0])
    }

    /// Reduces over `dims` and broadcasts the result back to `a`'s shape.
    pub(crate) fn reduce_keep(&self, a: T<'c, 'b>, dims: &[usize], red: Red) -> R<T<'c, 'b>> {
        let s = self.shape(&a);
        let r = self.reduce(a, dims, red)?;
        let kept: Vec<i64> = (0..s.len())
            .filter(|d| !dims.contains(d))
            .map(|d| d as i64)
            .collect();
        self.bcast_dims(r, &s, &kept)
    }

    pub(crate) fn slice(
        &self,
        a: T<'c, 'b>,
        start: &[i64],
        limit: &[i64],
        strides: &[i64],
    ) -> R<T<'c, 'b>> {
        let out: Vec<u64> = (0..start.len())
            .map(|d| {
                let len = limit[d] - start[d];
                if len <= 0 {
                    0
                } else {
                    ((len + strides[d] - 1) / strides[d]) as u64
                }
            })
            .collect();
        self.op(
            "stablehlo.slice",
            &[a],
            &[
                ("start_indices", arr(start)),
                ("limit_indices", arr(limit)),
                ("strides", arr(strides)),
            ],
            &out,
            a.e,
        )
    }

    /// A slice `[lo, hi)` along one dimension.
    pub(crate) fn slice_dim(&self, a: T<'c, 'b>, dim: usize, lo: u64, hi: u64) -> R<T<'c, 'b>> {
        let s = self.shape(&a);
        let mut start = vec![0i64; s.len()];
        let mut limit: Vec<i64> = s.iter().map(|&d| d as i64).collect();
        start[dim] = lo as i64;
        limit[dim] = hi as i64;
        self.slice(a, &start, &limit, &vec![1; s.len()])
    }

    pub(crate) fn reverse(&self, a: T<'c, 'b>, dims: &[i64]) -> R<T<'c, 'b>> {
        if dims.is_empty() {
            return Ok(a);
        }
        self.op(
            "stablehlo.reverse",
            &[a],
            &[("dimensions", arr(dims))],
            &self.shape(&a),
            a.e,
        )
    }

    pub(crate) fn concat(&self, vs: &[T<'c, 'b>], dim: usize) -> R<T<'c, 'b>> {
        if vs.len() == 1 {
            return Ok(vs[0]);
        }
        let mut out = self.shape(&vs[0]);
        out[dim] = vs.iter().map(|v| self.shape(v)[dim]).sum();
        self.op(
            "stablehlo.concatenate",
            vs,
            &[("dimension", format!("{dim} : i64"))],
            &out,
            vs[0].e,
        )
    }

    /// `dot_general` with explicit dimension numbers; float products at HIGHEST precision (no bf16
    /// passes on TPU).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dot(
        &self,
        a: T<'c, 'b>,
        b: T<'c, 'b>,
        batch_a: &[i64],
        batch_b: &[i64],
        contract_a: &[i64],
        contract_b: &[i64],
        out: &[u64],
    ) -> R<T<'c, 'b>> {
        let mut parts = Vec::new();
        if !batch_a.is_empty() {
            parts.push(format!("lhs_batching_dimensions = {}", list(batch_a)));
            parts.push(format!("rhs_batching_dimensions = {}", list(batch_b)));
        }
        if !contract_a.is_empty() {
            parts.push(format!("lhs_contracting_dimensions = {}", list(contract_a)));
            parts.push(format!("rhs_contracting_dimensions = {}", list(contract_b)));
        }
        self.op(
            "stablehlo.dot_general",
            &[a, b],
            &[
                (
                    "dot_dimension_numbers",
                    format!("#stablehlo.dot<{}>", parts.join(", ")),
                ),
                (
                    "precision_config",
                    "[#stablehlo<precision HIGHEST>, #stablehlo<precision HIGHEST>]".into(),
                ),
            ],
            out,
            a.e,
        )
    }

    /// Gathers whole slices of `x` along `axis` at `idx` (integer indices in range): the result is
    /// `x.shape[..axis] ++ idx.shape ++ x.shape[axis+1..]`.
    pub(crate) fn gather_axis(&self, x: T<'c, 'b>, idx: T<'c, 'b>, axis: usize) -> R<T<'c, 'b>> {
        let xs = self.shape(&x);
        let is = self.shape(&idx);
        let q = is.len();
        let mut idx_shape = is.clone();
        idx_shape.push(1);
        let idx = self.reshape(idx, &idx_shape)?;
        let r = xs.len();
        let offset: Vec<i64> = (0..axis)
            .chain(axis + q..r - 1 + q)
            .map(|d| d as i64)
            .collect();
        let mut sizes: Vec<i64> = xs.iter().map(|&d| d as i64).collect();
        sizes[axis] = 1;
        let mut out: Vec<u64> = xs[..axis].to_vec();
        out.extend(&is);
        out.extend(&xs[axis + 1..]);
        self.op(
            "stablehlo.gather",
            &[x, idx],
            &[
                (
                    "dimension_numbers",
                    format!(
                        "#stablehlo.gather<offset_dims = {}, collapsed_slice_dims = [{axis}], start_index_map = [{axis}], index_vector_dim = {q}>",
                        list(&offset)
                    ),
                ),
                ("slice_sizes", arr(&sizes)),
                ("indices_are_sorted", "false".into()),
            ],
            &out,
            x.e,
        )
    }
}

/// `dense<[[lo, hi], ...]> : tensor<Nx2xi64>`.
pub(crate) fn pads_attr(pads: &[(i64, i64)]) -> String {
    let inner: Vec<String> = pads.iter().map(|(l, h)| format!("[{l}, {h}]")).collect();
    if pads.is_empty() {
        "dense<> : tensor<0x2xi64>".into()
    } else {
        format!(
            "dense<[{}]> : tensor<{}x2xi64>",
            inner.join(", "),
            pads.len()
        )
    }
}

pub(crate) fn dims_text(s: &[u64]) -> String {
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

/// The representable range of an integer element type.
pub(crate) fn int_range(e: E) -> (i64, i64) {
    match e {
        E::I(1) => (0, 1),
        E::I(64) => (i64::MIN, i64::MAX),
        E::I(n) => (-(1i64 << (n - 1)), (1i64 << (n - 1)) - 1),
        E::U(64) => (0, i64::MAX),
        E::U(n) => (0, (1i64 << n) - 1),
        _ => (0, 0),
    }
}

/// The little-endian bytes of one element of `e` holding `f` (floats) or `i` (integers, wrapped).
pub(crate) fn scalar_bytes(e: E, f: f64, i: i64) -> Vec<u8> {
    match e {
        E::F16 => half::f16::from_f64(f).to_le_bytes().to_vec(),
        E::BF16 => half::bf16::from_f64(f).to_le_bytes().to_vec(),
        E::F32 => (f as f32).to_le_bytes().to_vec(),
        E::F64 => f.to_le_bytes().to_vec(),
        E::I(1) => vec![(i != 0) as u8],
        E::I(n) | E::U(n) => i.to_le_bytes()[..(n as usize / 8)].to_vec(),
    }
}
