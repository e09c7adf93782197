//! The reference interpreter: runs a verified module's function on concrete inputs.
//!
//! Values are float/integer [`Tensor`]s or, for quantized types, [`QuantizedTensor`]s produced and
//! consumed bit-exactly by qc-quant. nn ops follow [`crate::interp`]'s semantics. `quant.matmul` decodes
//! its weights (and a quantized activation) exactly and multiplies with f64 accumulation;
//! `quant.quantize {amax = A}` quantizes with the static maximum A ([`QuantizeOptions::tensor_amax`]).
//! [`run_func_observed`] shows every computed tensor to a callback (calibration). Errors are diagnostics
//! at the failing op.

use qc_ir::attr::Attribute;
use qc_ir::module::{Func, Module, Value};
use qc_ir::ops::QcOp;
use qc_ir::resource::Blob;
use qc_ir::types::{ElemType, TensorType};
use qc_ir::Diagnostic;
use qc_nn::NnOp;
use qc_quant::ops::QuantOp;
use qc_quant::tensor::{dequantize, quantize, QuantizeOptions, QuantizedTensor};

use crate::interp::{eval_nn, round_to, Data, Tensor};
use crate::linear;

/// A run-time value.
#[derive(Clone, Debug)]
pub enum RtValue {
    /// A float or integer tensor.
    Tensor(Tensor),
    /// A quantized tensor.
    Quant(QuantizedTensor),
}

impl RtValue {
    fn tensor(&self) -> Result<&Tensor, String> {
        match self {
            RtValue::Tensor(t) => Ok(t),
            RtValue::Quant(_) => {
                Err("expected a float or integer tensor, found a quantized one".into())
            }
        }
    }
}

/// Checks that a concrete tensor fits a declared type (element type equal, static dimensions equal).
pub fn check_fits(t: &Tensor, ty: &TensorType) -> Result<(), String> {
    let dims_ok = t.shape.len() == ty.rank()
        && t.shape
            .iter()
            .zip(&ty.dims)
            .all(|(&n, d)| d.as_static().is_none_or(|s| s == n as u64));
    if t.elem != ty.elem || !dims_ok {
        return Err(format!(
            "a tensor of shape {:?} and element type {} does not fit {ty}",
            t.shape, t.elem
        ));
    }
    Ok(())
}

/// Runs function `name` of `m` on `inputs` (one per argument, in order) and returns its results.
pub fn run_func(m: &Module, name: &str, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Diagnostic> {
    run(m, name, inputs, None)
}

/// [`run_func`], also showing `observe` every float or integer tensor the run computes, as soon as it
/// exists: first each argument (in order), then the results of each op in evaluation order (constants
/// are evaluated just before their first use). `observe(v, t)` gets the value and its tensor by
/// reference, before the run drops it; quantized values are not shown. Calibration uses it to measure
/// activations without keeping them. The results are those of [`run_func`].
pub fn run_func_observed(
    m: &Module,
    name: &str,
    inputs: Vec<Tensor>,
    observe: &mut dyn FnMut(Value, &Tensor),
) -> Result<Vec<Tensor>, Diagnostic> {
    run(m, name, inputs, Some(observe))
}

/// What [`run_func_observed`] calls for each computed tensor.
type Observer<'a> = &'a mut dyn FnMut(Value, &Tensor);

fn run(
    m: &Module,
    name: &str,
    inputs: Vec<Tensor>,
    mut observe: Option<Observer>,
) -> Result<Vec<Tensor>, Diagnostic> {
    let f = m.func(name).ok_or_else(|| {
        Diagnostic::error(
            Default::default(),
            format!("no function @{name} in the module"),
        )
    })?;
    if inputs.len() != f.args.len() {
        return Err(Diagnostic::error(
            f.loc.clone(),
            format!(
                "@{name} takes {} inputs, {} given",
                f.args.len(),
                inputs.len()
            ),
        ));
    }
    let mut env: Vec<Option<RtValue>> = vec![None; f.num_values()];
    for (i, (t, &a)) in inputs.into_iter().zip(&f.args).enumerate() {
        check_fits(&t, f.ty(a))
            .map_err(|e| Diagnostic::error(f.loc.clone(), format!("input {i}: {e}")))?;
        if let Some(obs) = observe.as_mut() {
            obs(a, &t);
        }
        env[a.0 as usize] = Some(RtValue::Tensor(t));
    }
    // Memory: a model's weights are constants at the top of the function. Each constant without operands
    // is evaluated just before its first use, and every value is dropped after its last use (unless
    // returned), so a run holds about one layer's weights decoded at a time, not all of them.
    let n = f.num_values();
    let (mut first_use, mut last_use) = (vec![usize::MAX; n], vec![usize::MAX; n]);
    for (i, op) in f.ops.iter().enumerate() {
        for &v in &op.operands {
            first_use[v.0 as usize] = first_use[v.0 as usize].min(i);
            last_use[v.0 as usize] = i;
        }
    }
    let mut returned = vec![false; n];
    for &v in &f.ret {
        returned[v.0 as usize] = true;
    }
    let deferred = |op: &qc_ir::Op| {
        matches!(QcOp::of(op), Some(QcOp::Constant))
            && op.operands.is_empty()
            && op
                .results
                .iter()
                .all(|r| !returned[r.0 as usize] && first_use[r.0 as usize] != usize::MAX)
    };
    let mut before: Vec<Vec<usize>> = vec![Vec::new(); f.ops.len()];
    for (i, op) in f.ops.iter().enumerate() {
        if deferred(op) {
            let first = op.results.iter().map(|r| first_use[r.0 as usize]).min();
            before[first.unwrap_or(i)].push(i);
        }
    }
    let order = (0..f.ops.len())
        .filter(|&i| !deferred(&f.ops[i]))
        .flat_map(|i| before[i].iter().copied().chain([i]));
    for i in order {
        let op = &f.ops[i];
        let results = eval_op(m, f, op, &env)
            .map_err(|e| Diagnostic::error(op.loc.clone(), format!("{}: {e}", op.name())))?;
        for (&r, v) in op.results.iter().zip(results) {
            if let (Some(obs), RtValue::Tensor(t)) = (observe.as_mut(), &v) {
                obs(r, t);
            }
            if last_use[r.0 as usize] != usize::MAX || returned[r.0 as usize] {
                env[r.0 as usize] = Some(v);
            }
        }
        for &v in &op.operands {
            if last_use[v.0 as usize] == i && !returned[v.0 as usize] {
                env[v.0 as usize] = None;
            }
        }
    }
    // A value returned more than once is cloned for all but its last position.
    let mut remaining = vec![0usize; env.len()];
    for &v in &f.ret {
        remaining[v.0 as usize] += 1;
    }
    f.ret
        .iter()
        .map(|&v| {
            let slot = v.0 as usize;
            remaining[slot] -= 1;
            if remaining[slot] > 0 {
                env[slot].clone()
            } else {
                env[slot].take()
            }
        })
        .map(|value| match value {
            Some(RtValue::Tensor(t)) => Ok(t),
            Some(RtValue::Quant(q)) => {
                let data = dequantize(&q)
                    .map_err(|e| Diagnostic::error(f.ret_loc.clone(), e.to_string()))?;
                Ok(Tensor::new(
                    q.shape.clone(),
                    ElemType::F32,
                    Data::F(data.into_iter().map(f64::from).collect()),
                ))
            }
            None => Err(Diagnostic::error(
                f.ret_loc.clone(),
                "a returned value was never computed",
            )),
        })
        .collect()
}

fn operand(env: &[Option<RtValue>], v: Value) -> Result<&RtValue, String> {
    env[v.0 as usize]
        .as_ref()
        .ok_or_else(|| "an operand was never computed".to_string())
}

fn eval_op(
    m: &Module,
    f: &Func,
    op: &qc_ir::Op,
    env: &[Option<RtValue>],
) -> Result<Vec<RtValue>, String> {
    let result_ty = op.results.first().map(|&r| f.ty(r));
    if let Some(nn) = NnOp::of(op) {
        let inputs: Vec<Tensor> = op
            .operands
            .iter()
            .map(|&v| operand(env, v)?.tensor().cloned())
            .collect::<Result<_, _>>()?;
        let elem = result_ty.map(|t| t.elem.clone()).unwrap_or(ElemType::F32);
        let outs = eval_nn(nn, &op.attrs, &inputs, &elem)?;
        for (t, &r) in outs.iter().zip(&op.results) {
            check_fits(t, f.ty(r))?;
        }
        return Ok(outs.into_iter().map(RtValue::Tensor).collect());
    }
    if let Some(q) = QuantOp::of(op) {
        if q == QuantOp::DynamicQuantizeLinear {
            let x = operand(env, op.operands[0])?.tensor()?;
            return Ok(linear::dynamic_quantize(x)?
                .into_iter()
                .map(RtValue::Tensor)
                .collect());
        }
        return eval_quant(q, f, op, env).map(|v| vec![v]);
    }
    match QcOp::of(op) {
        Some(QcOp::Constant) => {
            let ty = result_ty.ok_or("a constant has a result")?;
            let t = match op.attr("value") {
                Some(Attribute::Dense(d)) => Tensor::from_dense(d, ty)?,
                Some(Attribute::DenseResource(name)) => {
                    let blob = m
                        .resources
                        .get(name)
                        .ok_or_else(|| format!("resource '{name}' is not defined"))?;
                    let bytes = match blob {
                        Blob::Elided => {
                            return Err(format!(
                                "resource '{name}' was elided: its bytes are not in this module"
                            ))
                        }
                        b => b.bytes().unwrap_or_default(),
                    };
                    if let Some(fmt) = ty.elem.as_quant() {
                        // The blob layout of qc_quant::blob: packed codes, scales, zero points, tensor scale.
                        let shape: Vec<usize> = ty
                            .static_shape()
                            .ok_or_else(|| {
                                format!("a quantized constant needs a static shape, not {ty}")
                            })?
                            .into_iter()
                            .map(|d| d as usize)
                            .collect();
                        let q = qc_quant::blob::from_blob(bytes, fmt, &shape, name)
                            .map_err(|e| e.to_string())?;
                        return Ok(vec![RtValue::Quant(q)]);
                    }
                    Tensor::from_bytes(bytes, ty)?
                }
                _ => return Err("a constant needs a dense value".into()),
            };
            Ok(vec![RtValue::Tensor(t)])
        }
        None => Err(format!("the interpreter does not know op '{}'", op.name())),
    }
}

fn to_f32(t: &Tensor) -> Result<Vec<f32>, String> {
    match &t.data {
        Data::F(v) => Ok(v.iter().map(|&x| x as f32).collect()),
        Data::I(_) => Err("expected a float tensor".into()),
    }
}

fn eval_quant(
    q: QuantOp,
    f: &Func,
    op: &qc_ir::Op,
    env: &[Option<RtValue>],
) -> Result<RtValue, String> {
    let result_ty = f.ty(op.results[0]);
    match q {
        QuantOp::Quantize => {
            let x = operand(env, op.operands[0])?.tensor()?;
            let fmt = result_ty
                .elem
                .as_quant()
                .ok_or("quantize must produce a quantized type")?;
            let opts = QuantizeOptions {
                name: f
                    .value(op.results[0])
                    .name
                    .clone()
                    .unwrap_or_else(|| "tensor".into()),
                seed: op.attr("seed").and_then(Attribute::as_int).unwrap_or(0) as u64,
                // The calibrated static maximum (see quant.quantize): per-tensor formats take their
                // scale from it, two-level formats their tensor scale.
                tensor_amax: op
                    .attr("amax")
                    .and_then(Attribute::as_f64)
                    .map(|a| a as f32),
                ..QuantizeOptions::default()
            };
            let qt = quantize(&to_f32(x)?, &x.shape, fmt, &opts).map_err(|e| e.to_string())?;
            Ok(RtValue::Quant(qt))
        }
        QuantOp::Dequantize => {
            let RtValue::Quant(qt) = operand(env, op.operands[0])? else {
                return Err("dequantize needs a quantized operand".into());
            };
            let data = dequantize(qt).map_err(|e| e.to_string())?;
            let elem = result_ty.elem.clone();
            Ok(RtValue::Tensor(Tensor::new(
                qt.shape.clone(),
                elem.clone(),
                Data::F(
                    data.into_iter()
                        .map(|v| round_to(&elem, v as f64))
                        .collect(),
                ),
            )))
        }
        QuantOp::QuantizeLinear | QuantOp::DequantizeLinear => {
            let ts: Vec<&Tensor> = op
                .operands
                .iter()
                .map(|&v| operand(env, v)?.tensor())
                .collect::<Result<_, _>>()?;
            let axis = op.attr("axis").and_then(Attribute::as_int).unwrap_or(1);
            let block = op
                .attr("block_size")
                .and_then(Attribute::as_int)
                .unwrap_or(0);
            let saturate = op.attr("saturate").and_then(Attribute::as_int).unwrap_or(1) != 0;
            let out = if q == QuantOp::QuantizeLinear {
                linear::quantize(ts[0], ts[1], ts[2], axis, block, saturate, &result_ty.elem)?
            } else {
                linear::dequantize(ts[0], ts[1], ts[2], axis, block, &result_ty.elem)?
            };
            Ok(RtValue::Tensor(out))
        }
        QuantOp::DynamicQuantizeLinear => {
            Err("dynamic_quantize_linear has three results; eval_op evaluates it".into())
        }
        QuantOp::Hadamard => {
            let x = operand(env, op.operands[0])?.tensor()?;
            let block = op.attr("block").and_then(Attribute::as_int).unwrap_or(0) as usize;
            let n = *x.shape.last().ok_or("hadamard needs rank >= 1")?;
            if block == 0 || !block.is_power_of_two() || n % block != 0 {
                return Err(format!(
                    "hadamard block {block} does not fit the last dimension {n}"
                ));
            }
            let Data::F(v) = &x.data else {
                return Err("hadamard needs a float tensor".into());
            };
            let mut out = v.clone();
            for chunk in out.chunks_exact_mut(block) {
                qc_quant::hadamard::fwht(chunk);
            }
            let elem = x.elem.clone();
            Ok(RtValue::Tensor(Tensor::new(
                x.shape.clone(),
                elem.clone(),
                Data::F(out.into_iter().map(|v| round_to(&elem, v)).collect()),
            )))
        }
        QuantOp::Matmul => {
            // A quantized activation is decoded exactly, then rounded to the result's float type.
            let xd;
            let x = match operand(env, op.operands[0])? {
                RtValue::Tensor(t) => t,
                RtValue::Quant(xq) => {
                    let elem = result_ty.elem.clone();
                    let v = dequantize(xq).map_err(|e| e.to_string())?;
                    xd = Tensor::new(
                        xq.shape.clone(),
                        elem.clone(),
                        Data::F(v.into_iter().map(|v| round_to(&elem, v as f64)).collect()),
                    );
                    &xd
                }
            };
            let RtValue::Quant(w) = operand(env, op.operands[1])? else {
                return Err("quant.matmul needs quantized weights".into());
            };
            let wd = dequantize(w).map_err(|e| e.to_string())?;
            let mut wt = Tensor::new(
                w.shape.clone(),
                ElemType::F32,
                Data::F(wd.into_iter().map(f64::from).collect()),
            );
            if op.attr("transpose_b").is_some() {
                let perm = qc_ir::Attrs::from_iter([(
                    "perm",
                    Attribute::Array(vec![Attribute::Int(1), Attribute::Int(0)]),
                )]);
                wt = eval_nn(NnOp::Transpose, &perm, &[wt], &ElemType::F32)?.remove(0);
            }
            wt.elem = x.elem.clone();
            let out = eval_nn(
                NnOp::Matmul,
                &qc_ir::Attrs::new(),
                &[x.clone(), wt],
                &x.elem,
            )?
            .remove(0);
            check_fits(&out, result_ty)?;
            Ok(RtValue::Tensor(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qc_ir::{parse_module, Registry, Source};

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.register(qc_nn::dialect());
        r.register(qc_quant::ops::dialect());
        r
    }

    #[test]
    fn runs_a_function_with_constants_and_quant_ops() {
        let text = r#"
func.func @f(%x: tensor<2x32xf32>) -> (tensor<2x32xf32>, tensor<2x2xf32>) {
  %c = qc.constant {value = dense<2.0>} : () -> tensor<f32>
  %y = nn.mul %x, %c : (tensor<2x32xf32>, tensor<f32>) -> tensor<2x32xf32>
  %q = quant.quantize %y : (tensor<2x32xf32>) -> tensor<2x32x!quant.mxfp8>
  %d = quant.dequantize %q : (tensor<2x32x!quant.mxfp8>) -> tensor<2x32xf32>
  %m = quant.matmul %x, %q {transpose_b} : (tensor<2x32xf32>, tensor<2x32x!quant.mxfp8>) -> tensor<2x2xf32>
  return %d, %m : tensor<2x32xf32>, tensor<2x2xf32>
}"#;
        let m = parse_module(text, &Source::named("t"), &registry()).unwrap();
        qc_ir::verify_module(&m).unwrap();
        // y = 2x holds multiples of 1/4 with a row maximum of exactly 4: under the FLOOR rule the block
        // scale is 2^(2 - 8) and every element (at most 256 after scaling) is exact in e4m3.
        let vals: Vec<f64> = (0..64).map(|i| (i % 17) as f64 / 8.0).collect();
        let x = Tensor::new(vec![2, 32], ElemType::F32, Data::F(vals.clone()));
        let out = run_func(&m, "f", vec![x]).unwrap();
        assert_eq!(out[0].data, Data::F(vals.iter().map(|v| v * 2.0).collect()));
        // Entry (0, 1) of x (2x)^T: row 0 of x dotted with row 1 of 2x, exact in f64, rounded to f32 once.
        let expect: f64 = (0..32).map(|i| vals[i] * 2.0 * vals[32 + i]).sum();
        assert_eq!(out[1].data.f(1), expect as f32 as f64);
        let bad = Tensor::new(vec![3, 32], ElemType::F32, Data::F(vec![0.0; 96]));
        assert!(run_func(&m, "f", vec![bad])
            .unwrap_err()
            .message
            .contains("does not fit"));
    }

    #[test]
    fn a_value_returned_twice_is_returned_twice() {
        let text = r#"
func.func @f(%x: tensor<3xf32>) -> (tensor<3xf32>, tensor<3xf32>, tensor<3xf32>) {
  %y = nn.neg %x : (tensor<3xf32>) -> tensor<3xf32>
  return %y, %x, %y : tensor<3xf32>, tensor<3xf32>, tensor<3xf32>
}"#;
        let m = parse_module(text, &Source::named("t"), &registry()).unwrap();
        let x = Tensor::new(vec![3], ElemType::F32, Data::F(vec![1.0, -2.0, 3.0]));
        let out = run_func(&m, "f", vec![x]).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].data, Data::F(vec![-1.0, 2.0, -3.0]));
        assert_eq!(out[1].data, Data::F(vec![1.0, -2.0, 3.0]));
        assert_eq!(out[2].data, out[0].data);
    }

    #[test]
    fn quantized_resource_constants_decode_through_the_blob_layout() {
        use qc_quant::tensor::{dequantize, quantize, QuantizeOptions};
        let fmt = qc_ir::quant::named_format("nvfp4").unwrap().ty.clone();
        let w: Vec<f32> = (0..64)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 3.0)
            .collect();
        let q = quantize(&w, &[2, 32], &fmt, &QuantizeOptions::default()).unwrap();
        let blob = qc_quant::blob::to_blob(&q).unwrap();
        let hex: String = [16u8, 0, 0, 0]
            .iter()
            .chain(&blob)
            .map(|b| format!("{b:02X}"))
            .collect();
        let text = format!(
            "func.func @f(%x: tensor<1x32xf32>) -> tensor<1x2xf32> {{
  %w = qc.constant {{value = dense_resource<w>}} : () -> tensor<2x32x!quant.nvfp4>
  %y = quant.matmul %x, %w {{transpose_b}} : (tensor<1x32xf32>, tensor<2x32x!quant.nvfp4>) -> tensor<1x2xf32>
  return %y : tensor<1x2xf32>
}}
{{-# dialect_resources: {{ qc: {{ w: \"0x{hex}\" }} }} #-}}"
        );
        let m = parse_module(&text, &Source::named("t"), &registry()).unwrap();
        qc_ir::verify_module(&m).unwrap();
        let x: Vec<f64> = (0..32).map(|i| (i as f64 - 16.0) / 8.0).collect();
        let out = run_func(
            &m,
            "f",
            vec![Tensor::new(vec![1, 32], ElemType::F32, Data::F(x.clone()))],
        )
        .unwrap();
        let wd = dequantize(&q).unwrap();
        for j in 0..2 {
            let want: f64 = (0..32).map(|k| x[k] * wd[j * 32 + k] as f64).sum();
            assert_eq!(out[0].data.f(j), want as f32 as f64, "column {j}");
        }
        // A blob of the wrong size is an error naming the resource, not a panic.
        let short = text.replace(&hex[hex.len() - 8..], "");
        let m = parse_module(&short, &Source::named("t"), &registry()).unwrap();
        let x = Tensor::new(vec![1, 32], ElemType::F32, Data::F(vec![0.0; 32]));
        assert!(run_func(&m, "f", vec![x])
            .unwrap_err()
            .message
            .contains("needs"));
    }

    #[test]
    fn the_observer_sees_every_tensor_once_and_changes_nothing() {
        let text = r#"
func.func @f(%x: tensor<2x32xf32>) -> tensor<2x2xf32> {
  %c = qc.constant {value = dense<0.5>} : () -> tensor<32x2xf32>
  %h = nn.relu %x : (tensor<2x32xf32>) -> tensor<2x32xf32>
  %unused = nn.neg %x : (tensor<2x32xf32>) -> tensor<2x32xf32>
  %q = quant.quantize %h : (tensor<2x32xf32>) -> tensor<2x32x!quant.mxfp8>
  %d = quant.dequantize %q : (tensor<2x32x!quant.mxfp8>) -> tensor<2x32xf32>
  %y = nn.matmul %d, %c : (tensor<2x32xf32>, tensor<32x2xf32>) -> tensor<2x2xf32>
  return %y : tensor<2x2xf32>
}"#;
        let m = parse_module(text, &Source::named("t"), &registry()).unwrap();
        let vals: Vec<f64> = (0..64).map(|i| (i % 9) as f64 - 4.0).collect();
        let x = || Tensor::new(vec![2, 32], ElemType::F32, Data::F(vals.clone()));
        let mut seen: Vec<(Value, Vec<usize>)> = Vec::new();
        let out = run_func_observed(&m, "f", vec![x()], &mut |v, t| {
            seen.push((v, t.shape.clone()))
        })
        .unwrap();
        assert_eq!(out, run_func(&m, "f", vec![x()]).unwrap());
        let f = &m.funcs[0];
        let name = |v: Value| f.value(v).name.clone().unwrap_or_default();
        let order: Vec<String> = seen.iter().map(|(v, _)| name(*v)).collect();
        // The argument first; the constant just before its first use; no quantized value.
        assert_eq!(order, ["x", "h", "unused", "d", "c", "y"]);
        assert_eq!(seen[5].1, vec![2, 2]);
    }

    #[test]
    fn quant_matmul_decodes_a_quantized_activation_quantized_with_a_static_amax() {
        let text = r#"
func.func @f(%x: tensor<2x32xf32>, %w: tensor<2x32xf32>) -> tensor<2x2xf32> {
  %wq = quant.quantize %w : (tensor<2x32xf32>) -> tensor<2x32x!quant.mxfp8>
  %xq = quant.quantize %x {amax = 2.0} : (tensor<2x32xf32>) -> tensor<2x32x!quant.fp8_e4m3>
  %y = quant.matmul %xq, %wq {transpose_b} : (tensor<2x32x!quant.fp8_e4m3>, tensor<2x32x!quant.mxfp8>) -> tensor<2x2xf32>
  return %y : tensor<2x2xf32>
}"#;
        let m = parse_module(text, &Source::named("t"), &registry()).unwrap();
        qc_ir::verify_module(&m).unwrap();
        let xv: Vec<f32> = (0..64).map(|i| ((i * 5 % 17) as f32 - 8.0) / 3.0).collect();
        let wv: Vec<f32> = (0..64).map(|i| ((i * 7 % 13) as f32 - 6.0) / 4.0).collect();
        let t = |v: &[f32]| {
            Tensor::new(
                vec![2, 32],
                ElemType::F32,
                Data::F(v.iter().map(|&a| a as f64).collect()),
            )
        };
        let out = run_func(&m, "f", vec![t(&xv), t(&wv)]).unwrap();
        let fp8 = qc_ir::quant::named_format("fp8_e4m3").unwrap().ty.clone();
        let mx = qc_ir::quant::named_format("mxfp8").unwrap().ty.clone();
        let opts = QuantizeOptions {
            tensor_amax: Some(2.0),
            ..QuantizeOptions::default()
        };
        let xd = dequantize(&quantize(&xv, &[2, 32], &fp8, &opts).unwrap()).unwrap();
        let wd = dequantize(&quantize(&wv, &[2, 32], &mx, &QuantizeOptions::default()).unwrap())
            .unwrap();
        // |x| reaches 8/3 > amax 2: those elements saturate to 2.
        assert!(xd.iter().all(|v| v.abs() <= 2.0 + 1e-6) && xd.contains(&2.0));
        for i in 0..2 {
            for j in 0..2 {
                let s: f64 = (0..32)
                    .map(|k| xd[i * 32 + k] as f64 * wd[j * 32 + k] as f64)
                    .sum();
                assert_eq!(out[0].data.f(i * 2 + j), s as f32 as f64, "({i}, {j})");
            }
        }
        // amax must be a finite maximum.
        for bad in ["-1.0", "nan", "inf"] {
            let t = text.replace("amax = 2.0", &format!("amax = {bad}"));
            let m = parse_module(&t, &Source::named("t"), &registry()).unwrap();
            assert!(qc_ir::verify_module(&m).is_err(), "{bad}");
        }
    }
}
