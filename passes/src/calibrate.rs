//! `calibrate{data=PATH,max_runs=N}`: runs the reference interpreter on calibration inputs and records,
//! on every linear layer, the statistics of its activation operand (see [`crate::calib`]).
//!
//! # Which function, which inputs
//! The pass calibrates the module's only function, or `@main` when there are several (a module with
//! several functions and no `@main` is a diagnostic). `PATH` (relative to the working directory) is
//! either an `.npz` archive or a folder of `.npy` files; an array's *name* is the archive member's or
//! the file's name without `.npy`. For every function argument `ARG` (the argument's value name as the
//! printer shows it: `%input_ids` is `input_ids`, an unnamed argument `argI`):
//! - an array named `ARG` feeds that argument in every run; or
//! - arrays named `ARG.0`, `ARG.1`, ... (a series counted from 0 without gaps, no leading zeros) feed it
//!   in run 0, 1, ...
//!
//! The number of runs is the length of the series (every series must have the same length), or 1 when
//! no argument has one; `max_runs=N` uses only the first N. A name that matches an argument exactly is
//! that argument's single array even if it also reads as `OTHER.I`. These are diagnostics that name the
//! argument and the file: an argument without an array, both `ARG` and `ARG.I` given, a gap in a
//! series, series of different lengths, an `.npy` name (folder) or member (archive) that names no
//! argument, an unreadable or malformed file, and an array whose shape does not fit the argument's
//! type (rank and static dimensions) or whose dtype cannot feed its element type. Dtypes follow
//! `qc run`: `<f4` feeds f32 / f16 / bf16 (rounded to nearest even), `<f2` f16, `<f8` f64, and any
//! integer or bool dtype an integer argument (wrapped to its width). Files in a folder that do not end
//! in `.npy` are ignored. An archive is read into memory once; a folder's files are read when a run
//! needs them.
//!
//! # What is measured
//! The activation `x` of each linear layer ([`crate::weights::linears`], and the `quant.matmul`s of
//! [`crate::weights::quantized_matmuls`] whose activation is still float) on every run, with the channel axis the
//! last one for matmul / gemm (`C = K`) and axis 1 for conv; a "row" is one position of all other axes.
//! Accumulated over all runs and written with [`crate::calib::write`]: `calib.rows`, `calib.amax`,
//! `calib.ch_amax`, the exact `calib.hist` of [`crate::calib::HIST_BINS`] bins over `[0, amax]` (final
//! amax: the data is run a second time once amax is known, and the bin of `|x|` is decided with exact
//! arithmetic, see [`hist_bin`]), and for matmul / gemm `calib.xtx`, `sum over rows of x^T x`
//! accumulated in f64 in run order and rounded to f32 once. Several layers reading the same activation
//! share one measurement. The `xtx` accumulators of one pass over the data hold at most
//! [`Calibrate::xtx_budget`] bytes (f64 `K x K` each, at least one layer per pass): a model whose
//! layers need more is run over the data more than twice, each time accumulating the next layers'
//! `x^T x`, so peak memory stays near one model run plus the budget. Layer names (resource names
//! `calib.NAME.hist` / `calib.NAME.xtx`) are [`crate::weights::Linear::name`], made unique with `.1`,
//! `.2`, ... when a weight is shared. Calibrating again replaces the statistics.
//!
//! A NaN or infinite activation is a diagnostic at the layer (statistics of non-finite data mean
//! nothing); so is any interpreter error, at the op that failed, naming the run. Progress is reported
//! once per run and pass over the data.
//!
//! # Contract (what the tests measure)
//! - The IR is unchanged except for the `calib.*` attributes on linear layers and their resources.
//! - `rows`, `amax` and `ch_amax` equal those computed independently from the activations; `hist`
//!   counts every element once (it sums to `rows * C`) in the bin the formula of [`crate::calib`]
//!   names; `xtx` matches an independent f64 computation to 1e-6 relative (passes/tests/calibrate.rs).
//! - The statistics do not depend on the `xtx` budget (one pass per layer gives the same bytes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qc_ir::module::{Func, Module, Value};
use qc_ir::pass::{Changed, Pass, PassContext, PassInfo, PassOption, PassOptions};
use qc_ir::types::ElemType;
use qc_ir::Diagnostic;
use qc_runtime::exec::{check_fits, run_func_observed};
use qc_runtime::interp::{round_to, wrap, Data, Tensor};
use qc_runtime::npy::{read_npy, read_npz, NpyArray, NpyData};

use crate::calib::{self, LayerStats, HIST_BINS};
use crate::weights::{self, LinearKind};

/// Registration.
pub const INFO: PassInfo = PassInfo {
    name: "calibrate",
    summary: "record activation statistics of every linear layer from calibration inputs",
    options: &[
        PassOption {
            name: "data",
            help: "an .npz archive or a folder of .npy files: arrays ARG (every run) or ARG.0, ARG.1, ... (one per run) for each argument (required)",
        },
        PassOption {
            name: "max_runs",
            help: "use at most this many runs, the first ones (default: all)",
        },
    ],
    build,
};

fn build(o: &PassOptions) -> Result<Box<dyn Pass>, String> {
    let data = o
        .get("data")
        .ok_or("option 'data' is required: an .npz archive or a folder of .npy files")?;
    let max_runs =
        match o.get("max_runs") {
            None => None,
            Some(s) => Some(s.parse::<usize>().ok().filter(|&n| n >= 1).ok_or_else(|| {
                format!("option 'max_runs' must be a positive integer, not '{s}'")
            })?),
        };
    Ok(Box::new(Calibrate {
        data: PathBuf::from(data),
        max_runs,
        xtx_budget: XTX_BUDGET,
    }))
}

/// The default bound on the bytes of `x^T x` accumulators held during one pass over the data.
pub const XTX_BUDGET: usize = 1 << 30;

/// The pass.
pub struct Calibrate {
    /// The `.npz` archive or folder of `.npy` files.
    pub data: PathBuf,
    /// Use only the first runs.
    pub max_runs: Option<usize>,
    /// Bytes of `x^T x` accumulators (f64) one pass over the data may hold; see the module doc.
    pub xtx_budget: usize,
}

/// The bin of `|x|` = `a` in a histogram of [`HIST_BINS`] bins over `[0, amax]`: the `b` with
/// `b * amax / BINS <= a < (b + 1) * amax / BINS`, decided exactly (`a * BINS` and `b * amax` are exact
/// in f64 for f32 `amax` and `a` of at most 53 significant bits), clamped to the last bin for
/// `a >= amax`. With `amax = 0` every value is in bin 0.
pub fn hist_bin(a: f64, amax: f32) -> usize {
    let amax = amax as f64;
    if amax <= 0.0 || a.is_nan() {
        return 0;
    }
    let scaled = a * HIST_BINS as f64;
    let last = HIST_BINS - 1;
    let mut b = ((scaled / amax).floor().max(0.0) as usize).min(last);
    while b > 0 && b as f64 * amax > scaled {
        b -= 1;
    }
    while b < last && (b + 1) as f64 * amax <= scaled {
        b += 1;
    }
    b
}

/// The value names of `f`'s arguments as the printer shows them.
pub fn arg_names(f: &Func) -> Vec<String> {
    let mut used = std::collections::BTreeSet::new();
    let mut counter = 0usize;
    f.args
        .iter()
        .map(|&a| {
            let name = match &f.value(a).name {
                Some(hint) => {
                    let mut name = hint.clone();
                    let mut k = 1;
                    while used.contains(&name) {
                        name = format!("{hint}_{k}");
                        k += 1;
                    }
                    name
                }
                None => loop {
                    counter += 1;
                    let name = format!("arg{}", counter - 1);
                    if !used.contains(&name) {
                        break name;
                    }
                },
            };
            used.insert(name.clone());
            name
        })
        .collect()
}

/// Where one array comes from.
enum ArraySrc {
    /// An archive member, already read.
    Member(usize),
    /// A file, read when needed.
    File(PathBuf),
}

/// The calibration inputs: for each argument, one array for every run or one per run.
struct Inputs {
    /// What the diagnostics call the data (`PATH` or `PATH:NAME.npy`).
    path: PathBuf,
    archive: Vec<(String, NpyArray)>,
    /// Per argument: the arrays (one, or one per run).
    per_arg: Vec<Vec<ArraySrc>>,
    runs: usize,
}

impl Inputs {
    fn open(path: &Path, f: &Func, names: &[String]) -> Result<Inputs, String> {
        let mut archive = Vec::new();
        let mut found: Vec<(String, ArraySrc)> = Vec::new();
        if path.is_dir() {
            let rd = std::fs::read_dir(path)
                .map_err(|e| format!("cannot read the folder {}: {e}", path.display()))?;
            let mut entries: Vec<PathBuf> = Vec::new();
            for e in rd {
                let e = e.map_err(|e| format!("cannot read the folder {}: {e}", path.display()))?;
                entries.push(e.path());
            }
            entries.sort();
            for p in entries {
                let Some(stem) = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".npy"))
                else {
                    continue;
                };
                if p.is_file() {
                    found.push((stem.to_string(), ArraySrc::File(p.clone())));
                }
            }
        } else {
            archive = read_npz(path)?;
            for (i, (name, _)) in archive.iter().enumerate() {
                found.push((name.clone(), ArraySrc::Member(i)));
            }
        }
        let shown = |name: &str| format!("{}:{name}.npy", path.display());
        let index: BTreeMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut single: Vec<Option<ArraySrc>> = names.iter().map(|_| None).collect();
        let mut series: Vec<BTreeMap<usize, ArraySrc>> =
            names.iter().map(|_| BTreeMap::new()).collect();
        let all_args = || names.join(", ");
        for (name, src) in found {
            if let Some(&a) = index.get(name.as_str()) {
                single[a] = Some(src);
                continue;
            }
            let numbered = name.rsplit_once('.').and_then(|(arg, i)| {
                let a = *index.get(arg)?;
                let n: usize = i.parse().ok()?;
                (n.to_string() == i).then_some((a, n))
            });
            match numbered {
                Some((a, n)) => {
                    series[a].insert(n, src);
                }
                None => {
                    return Err(format!(
                        "{}: the array '{name}' names no argument of @{} (its arguments: {}; name \
                         arrays ARG or ARG.0, ARG.1, ...)",
                        shown(&name),
                        f.name,
                        all_args()
                    ))
                }
            }
        }
        let mut runs: Option<(usize, &str)> = None;
        for (a, s) in series.iter().enumerate() {
            if s.is_empty() {
                continue;
            }
            if single[a].is_some() {
                return Err(format!(
                    "{}: argument '{}' has both an array '{0}' for every run and numbered arrays \
                     '{0}.I'; give one or the other",
                    path.display(),
                    names[a]
                ));
            }
            let len = s.len();
            if let Some(gap) = (0..len).find(|i| !s.contains_key(i)) {
                return Err(format!(
                    "{}: argument '{}' has numbered arrays up to '{}.{}' but no '{}.{gap}'",
                    path.display(),
                    names[a],
                    names[a],
                    s.keys().last().copied().unwrap_or(0),
                    names[a]
                ));
            }
            match runs {
                Some((n, other)) if n != len => {
                    return Err(format!(
                        "{}: argument '{}' has {len} numbered arrays but '{other}' has {n}; every \
                         series must have one array per run",
                        path.display(),
                        names[a]
                    ))
                }
                _ => runs = Some((len, names[a].as_str())),
            }
        }
        let mut per_arg = Vec::with_capacity(names.len());
        for (a, (one, s)) in single.into_iter().zip(series).enumerate() {
            match one {
                Some(src) => per_arg.push(vec![src]),
                None if !s.is_empty() => per_arg.push(s.into_values().collect()),
                None => {
                    return Err(format!(
                    "{}: no array for argument '{}' of @{} (expected '{}' or '{}.0', '{}.1', ...)",
                    path.display(),
                    names[a],
                    f.name,
                    names[a],
                    names[a],
                    names[a]
                ))
                }
            }
        }
        Ok(Inputs {
            path: path.to_path_buf(),
            archive,
            per_arg,
            runs: runs.map_or(1, |(n, _)| n),
        })
    }

    /// The inputs of run `r`, converted to the argument types of `f`.
    fn run(&self, r: usize, f: &Func, names: &[String]) -> Result<Vec<Tensor>, String> {
        let mut out = Vec::with_capacity(f.args.len());
        for ((srcs, &a), name) in self.per_arg.iter().zip(&f.args).zip(names) {
            let src = if srcs.len() == 1 { &srcs[0] } else { &srcs[r] };
            let (arr, what) = match src {
                ArraySrc::Member(i) => {
                    let (n, arr) = &self.archive[*i];
                    (
                        std::borrow::Cow::Borrowed(arr),
                        format!("{}:{n}.npy", self.path.display()),
                    )
                }
                ArraySrc::File(p) => (
                    std::borrow::Cow::Owned(
                        read_npy(p).map_err(|e| format!("argument '{name}': {e}"))?,
                    ),
                    p.display().to_string(),
                ),
            };
            let ty = f.ty(a);
            let t = to_tensor(&arr, &ty.elem)
                .and_then(|t| check_fits(&t, ty).map(|_| t))
                .map_err(|e| format!("{what}: argument '{name}': {e}"))?;
            out.push(t);
        }
        Ok(out)
    }
}

/// An array as a tensor of element type `elem` (the conversions of `qc run`).
fn to_tensor(a: &NpyArray, elem: &ElemType) -> Result<Tensor, String> {
    let int = |v: &mut dyn Iterator<Item = i64>, bits: u8, unsigned: bool| {
        Data::I(v.map(|x| wrap(x, bits, unsigned)).collect())
    };
    let data = match (&a.data, elem) {
        (NpyData::F32(v), e @ (ElemType::F32 | ElemType::F16 | ElemType::BF16)) => {
            Data::F(v.iter().map(|&x| round_to(e, x as f64)).collect())
        }
        (NpyData::F16(_), ElemType::F16) => {
            Data::F(a.to_f32().into_iter().map(f64::from).collect())
        }
        (NpyData::F64(v), ElemType::F64) => Data::F(v.clone()),
        (NpyData::I64(v), &ElemType::Int { bits, unsigned }) => {
            int(&mut v.iter().copied(), bits, unsigned)
        }
        (NpyData::U8(v), &ElemType::Int { bits, unsigned }) => {
            int(&mut v.iter().map(|&x| x as i64), bits, unsigned)
        }
        (NpyData::U16(v), &ElemType::Int { bits, unsigned }) => {
            int(&mut v.iter().map(|&x| x as i64), bits, unsigned)
        }
        (d, e) => {
            return Err(format!(
                "a {} array cannot feed an argument of element type {e}",
                d.descr()
            ))
        }
    };
    if data.len() != a.shape.iter().product::<usize>() {
        return Err("the array's data does not match its shape".into());
    }
    Ok(Tensor::new(a.shape.clone(), elem.clone(), data))
}

/// One measured activation (shared by the layers that read it).
struct Acc {
    /// The activation value.
    x: Value,
    /// Channel axis 1 (conv) instead of the last.
    conv: bool,
    /// `K` when `x^T x` is accumulated (matmul / gemm).
    k: Option<usize>,
    /// The pass over the data that accumulates `x^T x`.
    xtx_pass: usize,
    /// Its first layer's index in the layer list (for diagnostics).
    layer: usize,
    rows: u64,
    amax: f32,
    ch_amax: Vec<f32>,
    hist: Vec<u64>,
    /// Upper triangle, row-major `K x K`, in f64 (only during its pass).
    xtx: Option<Vec<f64>>,
    /// The finished `x^T x`, f32, full.
    xtx_done: Option<Vec<f32>>,
    /// First problem seen (non-finite value, channel count change).
    error: Option<String>,
}

impl Acc {
    /// Accumulates one observed tensor during pass `pass`.
    fn observe(&mut self, t: &Tensor, pass: usize) {
        if self.error.is_some() {
            return;
        }
        let vals: std::borrow::Cow<[f64]> = match &t.data {
            Data::F(v) => std::borrow::Cow::Borrowed(v),
            Data::I(v) => std::borrow::Cow::Owned(v.iter().map(|&x| x as f64).collect()),
        };
        let rank = t.shape.len();
        let (outer, c, inner) = if self.conv {
            if rank < 2 {
                self.error = Some(format!("a conv activation of rank {rank}"));
                return;
            }
            (
                t.shape[0],
                t.shape[1],
                t.shape[2..].iter().product::<usize>(),
            )
        } else {
            let c = t.shape.last().copied().unwrap_or(1);
            (t.shape[..rank.saturating_sub(1)].iter().product(), c, 1)
        };
        if self.ch_amax.is_empty() {
            self.ch_amax = vec![0.0; c];
        } else if self.ch_amax.len() != c {
            self.error = Some(format!(
                "its channel count changed from {} to {c}",
                self.ch_amax.len()
            ));
            return;
        }
        if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
            self.error = Some(format!("element {i} of the activation is {}", vals[i]));
            return;
        }
        if pass == 0 {
            self.rows += (outer * inner) as u64;
            for o in 0..outer {
                for ch in 0..c {
                    let at = (o * c + ch) * inner;
                    let m = vals[at..at + inner]
                        .iter()
                        .fold(0f32, |m, &v| m.max(v.abs() as f32));
                    self.ch_amax[ch] = self.ch_amax[ch].max(m);
                }
            }
        }
        if pass == 1 {
            for &v in vals.iter() {
                self.hist[hist_bin(v.abs(), self.amax)] += 1;
            }
        }
        if let (Some(acc), Some(k)) = (self.xtx.as_mut(), self.k.filter(|&k| k > 0)) {
            if k != c {
                self.error = Some(format!("its last dimension {c} is not K = {k}"));
                return;
            }
            for row in vals.chunks_exact(k) {
                for i in 0..k {
                    let xi = row[i];
                    if xi == 0.0 {
                        continue;
                    }
                    for (a, &xj) in acc[i * k + i..(i + 1) * k].iter_mut().zip(&row[i..]) {
                        *a += xi * xj;
                    }
                }
            }
        }
    }

    /// Ends pass `pass`.
    fn finish_pass(&mut self, pass: usize) {
        if pass == 0 {
            self.amax = self.ch_amax.iter().fold(0f32, |m, &v| m.max(v));
        }
        if let (Some(acc), Some(k)) = (self.xtx.take(), self.k) {
            let mut full = vec![0f32; k * k];
            for i in 0..k {
                for j in i..k {
                    let v = acc[i * k + j] as f32;
                    full[i * k + j] = v;
                    full[j * k + i] = v;
                }
            }
            self.xtx_done = Some(full);
        }
    }
}

impl Pass for Calibrate {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&self, m: &mut Module, cx: &PassContext) -> Result<Changed, Diagnostic> {
        let fi = match m.funcs.len() {
            0 => return Ok(Changed::No),
            1 => 0,
            n => {
                let msg = format!(
                    "calibrate: the module has {n} functions and none is @main; calibration runs \
                     the only function or @main"
                );
                m.funcs
                    .iter()
                    .position(|f| f.name == "main")
                    .ok_or_else(|| Diagnostic::error(m.funcs[0].loc.clone(), msg))?
            }
        };
        // Float linear layers, and matmuls whose weights are already quantized (so that activation
        // quantization can follow GPTQ or LoRC), in op order.
        let mut layers = weights::linears(m, fi);
        layers.extend(weights::quantized_matmuls(m, fi));
        layers.sort_by_key(|l| l.op);
        if layers.is_empty() {
            return Ok(Changed::No);
        }
        let f = &m.funcs[fi];
        let names = arg_names(f);
        let fail = |msg: String| Diagnostic::error(f.loc.clone(), format!("calibrate: {msg}"));
        let inputs = Inputs::open(&self.data, f, &names).map_err(fail)?;
        let runs = self.max_runs.map_or(inputs.runs, |n| n.min(inputs.runs));

        // One accumulator per (activation, channel axis); layers point at theirs.
        let mut accs: Vec<Acc> = Vec::new();
        let mut layer_acc = Vec::with_capacity(layers.len());
        for (li, l) in layers.iter().enumerate() {
            let conv = l.kind == LinearKind::Conv;
            let at = match accs.iter().position(|a| a.x == l.x && a.conv == conv) {
                Some(at) => at,
                None => {
                    accs.push(Acc {
                        x: l.x,
                        conv,
                        k: (!conv).then_some(l.k),
                        xtx_pass: 0,
                        layer: li,
                        rows: 0,
                        amax: 0.0,
                        ch_amax: Vec::new(),
                        hist: vec![0; HIST_BINS],
                        xtx: None,
                        xtx_done: None,
                        error: None,
                    });
                    accs.len() - 1
                }
            };
            layer_acc.push(at);
        }
        // Passes over the data: 0 measures amax (and the first x^T x chunk), 1 the histograms, and
        // each pass accumulates the x^T x of the layers whose budget share falls in it.
        let (mut pass, mut used) = (0usize, 0usize);
        for a in accs.iter_mut() {
            let Some(k) = a.k else { continue };
            let bytes = k * k * 8;
            if used > 0 && used + bytes > self.xtx_budget {
                pass += 1;
                used = 0;
            }
            used += bytes;
            a.xtx_pass = pass;
        }
        let passes = (pass + 1).max(2);
        let mut by_value: BTreeMap<Value, Vec<usize>> = BTreeMap::new();
        for (i, a) in accs.iter().enumerate() {
            by_value.entry(a.x).or_default().push(i);
        }
        let fname = f.name.clone();
        for p in 0..passes {
            for a in accs.iter_mut() {
                if a.k.is_some() && a.xtx_pass == p {
                    let k = a.k.unwrap_or(0);
                    a.xtx = Some(vec![0f64; k * k]);
                }
            }
            for r in 0..runs {
                let ins = inputs.run(r, f, &names).map_err(fail)?;
                let mut obs = |v: Value, t: &Tensor| {
                    if let Some(ix) = by_value.get(&v) {
                        for &i in ix {
                            accs[i].observe(t, p);
                        }
                    }
                };
                run_func_observed(m, &fname, ins, &mut obs).map_err(|d| {
                    Diagnostic::error(d.loc, format!("calibrate: run {r}: {}", d.message))
                })?;
                if let Some(a) = accs.iter().find(|a| a.error.is_some()) {
                    let l = &layers[a.layer];
                    return Err(Diagnostic::error(
                        f.ops[l.op].loc.clone(),
                        format!(
                            "calibrate: layer '{}': in run {r} of {}: {}",
                            l.name,
                            self.data.display(),
                            a.error.as_deref().unwrap_or_default()
                        ),
                    ));
                }
                cx.progress.step(
                    INFO.name,
                    p * runs + r + 1,
                    passes * runs,
                    &format!("pass {} of {passes}, run {r}", p + 1),
                );
            }
            for a in accs.iter_mut() {
                a.finish_pass(p);
            }
        }

        // Record, in op order, under unique layer names.
        let mut taken = std::collections::BTreeSet::new();
        for (l, &ai) in layers.iter().zip(&layer_acc) {
            let mut name = l.name.clone();
            let mut n = 1;
            while taken.contains(&name) {
                name = format!("{}.{n}", l.name);
                n += 1;
            }
            taken.insert(name.clone());
            let a = &accs[ai];
            let stats = LayerStats {
                rows: a.rows,
                amax: a.amax,
                ch_amax: a.ch_amax.clone(),
                hist: Some(a.hist.clone()),
                xtx: a.xtx_done.clone(),
            };
            calib::write(m, fi, l.op, &name, &stats);
        }
        Ok(Changed::Yes)
    }
}
