//! `qc quantize`, `qc dequantize` and `qc formats --qsnr`.
//!
//! `qc quantize IN.npy --format F [--axis A] [--rounding R] [--seed S] [--nonfinite P] -o OUT.npz`
//! writes an archive with these members (see qc_quant::tensor for the scale layouts):
//!
//! | member | dtype | shape | contents |
//! |---|---|---|---|
//! | `codes` | uint8 | the input's | one unpacked element code per element |
//! | `scales` | uint8 (e8m0 / ue4m3 codes), float32, float16, or uint16 (bf16 bits) | per scheme | stored scales |
//! | `tensor_scale` | float32 | `()` | two-level formats only: the stored second-level scale |
//! | `zero_points` | uint8 | as `scales` | asymmetric formats only: zero-point codes |
//! | `packed` | uint8 | `(bytes,)` | the codes as stored (the format's packing) |
//! | `dequant` | float32 | the input's | the decoded values |
//! | `format` | uint8 | `(len,)` | the format's full text (`!quant.fmt<...>`), UTF-8 |
//!
//! `qc dequantize OUT.npz -o X.npy` decodes such an archive (from `codes`, or from `packed` when `codes`
//! is absent) and writes float32 with the codes' shape.
//!
//! Every failure is a [`Failure`]; bad input (unreadable or malformed files, unknown formats, wrong axis
//! or shape, NaN under the error policy) has exit code 2.

use crate::npy::{self, NpyArray, NpyData};
use qc_ir::quant::{named_format, named_formats, QuantType, Rounding};
use qc_quant::qsnr::{qsnr_report, Dist, REPORT_SEEDS};
use qc_quant::tensor::{
    dequantize, quantize, with_axis, NonFinitePolicy, QuantizeOptions, QuantizedTensor, Scales,
};
use std::io::Write;

use crate::output::{input_error, io_error, Failure};
use std::path::PathBuf;

/// Arguments of `qc quantize`.
#[derive(clap::Args, Debug, Clone)]
pub struct QuantizeArgs {
    /// Input array (.npy; float32, float64, float16 or integer, converted to float32).
    pub input: PathBuf,
    /// Format: a named format (`nvfp4`, `mxfp4`, ...; see `qc formats`) or a full `!quant.fmt<...>`.
    #[arg(long)]
    pub format: String,
    /// Axis of per-channel and group schemes (negative counts from the end).
    #[arg(long, allow_hyphen_values = true)]
    pub axis: Option<i32>,
    /// Element rounding: rne, ties_away, toward_zero or stochastic (default: the format's).
    #[arg(long)]
    pub rounding: Option<String>,
    /// Seed of stochastic rounding.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// NaN / infinity policy: error (refuse, naming the index) or propagate (NaN blocks).
    #[arg(long, default_value = "error")]
    pub nonfinite: String,
    /// Output archive (.npz).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

/// Arguments of `qc dequantize`.
#[derive(clap::Args, Debug, Clone)]
pub struct DequantizeArgs {
    /// An archive written by `qc quantize`.
    pub input: PathBuf,
    /// Output array (.npy, float32).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

/// Resolves `--format`: a named alias (optionally spelled `!quant.NAME`) or a full `!quant.fmt<...>`.
pub fn parse_format(text: &str) -> Result<QuantType, Failure> {
    let t = text.trim();
    let bare = t.strip_prefix("!quant.").unwrap_or(t);
    if let Some(f) = named_format(bare) {
        return Ok(f.ty.clone());
    }
    if bare.starts_with("fmt<") {
        // Eight dynamic dimensions: the parser checks axes against the rank, and any axis a format may
        // name is then in range; the real shape is checked when the tensor is quantized.
        let ty = qc_ir::parser::parse_type(&format!("tensor<?x?x?x?x?x?x?x?x!quant.{bare}>"))
            .map_err(|d| input_error(format!("cannot parse format `{t}`: {}", d.message)))?;
        let q = ty
            .elem
            .as_quant()
            .ok_or_else(|| input_error(format!("`{t}` is not a quantized format")))?;
        q.validate()
            .map_err(|e| input_error(format!("format `{t}`: {e}")))?;
        return Ok(q.clone());
    }
    let names: Vec<&str> = named_formats().iter().map(|f| f.name).collect();
    Err(input_error(format!(
        "unknown format `{t}`; named formats: {}",
        names.join(", ")
    )))
}

fn full_text(q: &QuantType) -> String {
    format!("!quant.fmt<{}>", q.params_text())
}

/// Runs `qc quantize`.
pub fn run_quantize(args: &QuantizeArgs) -> Result<(), Failure> {
    let mut fmt = parse_format(&args.format)?;
    if let Some(axis) = args.axis {
        fmt = with_axis(&fmt, axis).map_err(|e| input_error(format!("--axis {axis}: {e}")))?;
    }
    let rounding = match &args.rounding {
        None => None,
        Some(r) => Some(Rounding::from_name(r).ok_or_else(|| {
            input_error(format!(
                "unknown rounding `{r}`; expected rne, ties_away, toward_zero or stochastic"
            ))
        })?),
    };
    let nonfinite = match args.nonfinite.as_str() {
        "error" => NonFinitePolicy::Error,
        "propagate" => NonFinitePolicy::Propagate,
        p => {
            return Err(input_error(format!(
                "unknown --nonfinite policy `{p}`; expected error or propagate"
            )))
        }
    };
    let arr = npy::read_npy(&args.input).map_err(input_error)?;
    let data = arr.to_f32();
    let name = args.input.display().to_string();
    let opts = QuantizeOptions {
        name: name.clone(),
        rounding,
        seed: args.seed,
        nonfinite,
        tensor_amax: None,
    };
    let q = quantize(&data, &arr.shape, &fmt, &opts).map_err(|e| input_error(e.to_string()))?;
    let deq = dequantize(&q).map_err(|e| input_error(e.to_string()))?;
    let scales = match &q.scales {
        Scales::Codes(v) => NpyData::U8(v.clone()),
        Scales::F32(v) => NpyData::F32(v.clone()),
        Scales::F16(v) => NpyData::F16(v.clone()),
        Scales::BF16(v) => NpyData::U16(v.clone()),
    };
    let mut members: Vec<(&str, NpyArray)> = vec![
        ("codes", NpyArray::u8(q.shape.clone(), q.codes.clone())),
        (
            "scales",
            NpyArray {
                shape: q.scale_shape.clone(),
                data: scales,
            },
        ),
    ];
    if let Some(ts) = q.tensor_scale {
        members.push(("tensor_scale", NpyArray::f32(vec![], vec![ts])));
    }
    if let Some(z) = &q.zero_points {
        members.push((
            "zero_points",
            NpyArray::u8(q.scale_shape.clone(), z.clone()),
        ));
    }
    members.push((
        "packed",
        NpyArray::u8(vec![q.packed.len()], q.packed.clone()),
    ));
    members.push(("dequant", NpyArray::f32(q.shape.clone(), deq)));
    let text = full_text(&fmt).into_bytes();
    members.push(("format", NpyArray::u8(vec![text.len()], text)));
    let bytes = npy::to_npz_bytes(&members).map_err(io_error)?;
    qc_ir::util::write_atomic(&args.output, &bytes).map_err(io_error)
}

/// Runs `qc dequantize`.
pub fn run_dequantize(args: &DequantizeArgs) -> Result<(), Failure> {
    let what = args.input.display().to_string();
    let members = npy::read_npz(&args.input).map_err(input_error)?;
    let get = |n: &str| members.iter().find(|(k, _)| k == n).map(|(_, a)| a);
    let missing = |n: &str| input_error(format!("{what}: the archive has no `{n}` array"));
    let fmt_arr = get("format").ok_or_else(|| missing("format"))?;
    let NpyData::U8(text) = &fmt_arr.data else {
        return Err(input_error(format!(
            "{what}: `format` must be a uint8 array of UTF-8 text"
        )));
    };
    let text = std::str::from_utf8(text)
        .map_err(|_| input_error(format!("{what}: `format` is not UTF-8")))?;
    let fmt = parse_format(text)?;
    let bad = |m: String| input_error(format!("{what}: {m}"));
    let (shape, codes) = match (get("codes"), get("dequant")) {
        (Some(c), _) => match &c.data {
            NpyData::U8(v) => (c.shape.clone(), v.clone()),
            _ => return Err(bad("`codes` must be uint8".into())),
        },
        (None, Some(d)) => {
            let n: usize = d.shape.iter().product();
            let p = get("packed").ok_or_else(|| missing("codes"))?;
            let NpyData::U8(bytes) = &p.data else {
                return Err(bad("`packed` must be uint8".into()));
            };
            let codes = qc_quant::pack::unpack(bytes, n, fmt.elem.bits(), fmt.pack)
                .map_err(|e| bad(e.to_string()))?;
            (d.shape.clone(), codes)
        }
        (None, None) => return Err(missing("codes")),
    };
    let s = get("scales").ok_or_else(|| missing("scales"))?;
    use qc_ir::quant::ScaleType as S;
    let scales = match (&s.data, fmt.scale) {
        (NpyData::U8(v), S::E8M0 | S::UE4M3) => Scales::Codes(v.clone()),
        (NpyData::F32(v), S::F32) => Scales::F32(v.clone()),
        (NpyData::F16(v), S::F16) => Scales::F16(v.clone()),
        (NpyData::U16(v), S::BF16) => Scales::BF16(v.clone()),
        (d, st) => {
            return Err(bad(format!(
                "`scales` has dtype {} but the format's scales are {st}",
                d.descr()
            )))
        }
    };
    let tensor_scale = match get("tensor_scale").map(|a| &a.data) {
        None => None,
        Some(NpyData::F32(v)) if v.len() == 1 => Some(v[0]),
        Some(_) => return Err(bad("`tensor_scale` must be one float32".into())),
    };
    let zero_points = match get("zero_points").map(|a| &a.data) {
        None => None,
        Some(NpyData::U8(v)) => Some(v.clone()),
        Some(_) => return Err(bad("`zero_points` must be uint8".into())),
    };
    let q = QuantizedTensor {
        name: what.clone(),
        packed: Vec::new(),
        format: fmt,
        shape: shape.clone(),
        codes,
        scales,
        scale_shape: s.shape.clone(),
        tensor_scale,
        zero_points,
    };
    let x = dequantize(&q).map_err(|e| input_error(e.to_string()))?;
    let bytes = npy::to_npy_bytes(&NpyArray::f32(shape, x));
    qc_ir::util::write_atomic(&args.output, &bytes).map_err(io_error)
}

/// Prints `qc formats --qsnr`: QSNR (dB) of every named format on Gaussian, Laplace and Student-t(3)
/// samples, without and with a 32-point block Hadamard (means over the seeds of
/// `qc_quant::qsnr::qsnr_report`).
pub fn run_formats_qsnr(out: &mut dyn Write) -> std::io::Result<()> {
    let rows = qsnr_report();
    writeln!(
        out,
        "# QSNR (dB), 65,536 samples shaped 256x256, mean over {REPORT_SEEDS} seeds; H = 32-point block Hadamard"
    )?;
    write!(out, "{:<18}", "format")?;
    for d in Dist::ALL {
        write!(out, " {:>12} {:>12}", d.name(), format!("{}+H", d.name()))?;
    }
    writeln!(out)?;
    for f in named_formats() {
        write!(out, "{:<18}", f.name)?;
        for d in Dist::ALL {
            match rows.iter().find(|r| r.format == f.name && r.dist == d) {
                Some(r) => write!(out, " {:>12.2} {:>12.2}", r.plain, r.hadamard)?,
                None => write!(out, " {:>12} {:>12}", "-", "-")?,
            }
        }
        writeln!(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().expect("a temporary directory")
    }

    #[test]
    fn quantize_dequantize_round_trip_every_named_format() {
        let dir = tmp();
        let input = dir.path().join("x.npy");
        let data: Vec<f32> = (0..512)
            .map(|i| ((i * 37) % 101) as f32 / 10.0 - 5.0)
            .collect();
        std::fs::write(
            &input,
            npy::to_npy_bytes(&NpyArray::f32(vec![2, 256], data)),
        )
        .unwrap();
        for f in named_formats() {
            let out = dir.path().join(format!("{}.npz", f.name));
            let args = QuantizeArgs {
                input: input.clone(),
                format: f.name.into(),
                axis: None,
                rounding: None,
                seed: 0,
                nonfinite: "error".into(),
                output: out.clone(),
            };
            run_quantize(&args).unwrap_or_else(|e| panic!("{}: {e}", f.name));
            let back = dir.path().join(format!("{}.npy", f.name));
            run_dequantize(&DequantizeArgs {
                input: out.clone(),
                output: back.clone(),
            })
            .unwrap();
            let members = npy::read_npz(&out).unwrap();
            let dq = members
                .iter()
                .find(|(k, _)| k == "dequant")
                .unwrap()
                .1
                .clone();
            assert_eq!(npy::read_npy(&back).unwrap(), dq, "{}", f.name);
        }
    }

    #[test]
    fn bad_input_exits_2() {
        let dir = tmp();
        let input = dir.path().join("x.npy");
        std::fs::write(
            &input,
            npy::to_npy_bytes(&NpyArray::f32(vec![3, 5], vec![1.0; 15])),
        )
        .unwrap();
        let base = QuantizeArgs {
            input: input.clone(),
            format: "mxfp4".into(),
            axis: None,
            rounding: None,
            seed: 0,
            nonfinite: "error".into(),
            output: dir.path().join("o.npz"),
        };
        let e = run_quantize(&base).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.message().contains("multiple"), "{}", e.message());
        let e = run_quantize(&QuantizeArgs {
            format: "nope".into(),
            ..base.clone()
        })
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = run_quantize(&QuantizeArgs {
            format: "int8_channel".into(),
            axis: Some(5),
            ..base.clone()
        })
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.message().contains("axis 5"), "{}", e.message());
        std::fs::write(&input, b"garbage").unwrap();
        let e = run_quantize(&QuantizeArgs {
            format: "int8".into(),
            ..base
        })
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.message().contains("x.npy"), "{}", e.message());
    }

    #[test]
    fn full_format_text_parses_back() {
        for f in named_formats() {
            assert_eq!(parse_format(&full_text(&f.ty)).unwrap(), f.ty, "{}", f.name);
        }
    }
}
