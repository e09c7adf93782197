/* Quantized matrix products with fp8 activations and BF16 dot products (qc_backend_llvm::act8::fp8;
   contracts in act8/fp8.rs). Target independent: the BF16 kernel has its own target attribute and is
   chosen at run time by the caller; the FMA kernel is plain C. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <immintrin.h>

/* A weight format as the kernels read it (act8::fp8::F8Format). */
typedef struct {
  int32_t bits;        /* 8: one code per byte; 4: two codes per byte, lo_first */
  int32_t group;       /* > 0: elements per scale (a multiple of 16); 0: one scale per row; -1: none */
  int32_t store;       /* scale storage: 0 f32, 1 f16, 2 bf16, 3 e8m0, 4 ue4m3 (sign ignored) */
  int32_t reserved;
  uint16_t table[256]; /* the bf16 bits of each code's value (exact) */
} qc_f8_format;

static const uint32_t qc_f8_e8m0_bits[256] = { QC_F8_E8M0_TABLE };
static const uint32_t qc_f8_ue4m3_bits[256] = { QC_F8_UE4M3_TABLE };

static inline float qc_f8_bits(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }

/* The value of the stored scale at p (exact). */
static inline float qc_f8_scale(int store, const uint8_t *p) {
  float f;
  switch (store) {
  case 0: memcpy(&f, p, 4); return f;
  case 1: { uint16_t h; memcpy(&h, p, 2); return _cvtsh_ss(h); }
  case 2: { uint16_t h; memcpy(&h, p, 2); return qc_f8_bits((uint32_t)h << 16); }
  case 3: return qc_f8_bits(qc_f8_e8m0_bits[p[0]]);
  default: return qc_f8_bits(qc_f8_ue4m3_bits[p[0] & 0x7f]);
  }
}

/* K rounded up to a multiple of 32: the length of a prepared activation row. */
int64_t qc_f8_padded_k(int64_t k) { return (k + 31) / 32 * 32; }

static float qc_f8_pow2f(int e) { /* qc_quant::scale::pow2_f32 (the glue's qc_pow2f) */
  if (e > 127) return __builtin_inff();
  if (e >= -126) return qc_f8_bits((uint32_t)(e + 127) << 23);
  if (e >= -149) return qc_f8_bits(1u << (e + 149));
  return 0.0f;
}

/* x rounded to the minifloat with `man` mantissa bits, smallest normal exponent emin and largest
   finite value maxf, ties to even, saturating (the glue's qc_mf_round with sat = 1: qc_quant::codec's
   FloatParams::encode, then decode). */
static float qc_f8_round(float x, int man, int emin, float maxf) {
  uint32_t bits;
  memcpy(&bits, &x, 4);
  uint32_t sign = bits >> 31, a = bits & 0x7fffffffu;
  if (a >= 0x7f800000u) {
    if (a > 0x7f800000u) return __builtin_nanf("");
    return sign ? -maxf : maxf;
  }
  if (a == 0) return x;
  int e, exp2;
  uint64_t sig;
  if (a >= 0x00800000u) { e = (int)(a >> 23) - 127; sig = (a & 0x7fffffu) | 0x800000u; exp2 = e - 23; }
  else { e = 31 - __builtin_clz(a) - 149; sig = a; exp2 = -149; }
  int eb = e > emin ? e : emin, q = eb - man, shift = q - exp2;
  uint64_t n;
  if (shift <= 0) n = sig << (-shift);
  else if (shift > 40) n = 0;
  else {
    n = sig >> shift;
    uint64_t rem = sig & ((1ull << shift) - 1), half = 1ull << (shift - 1);
    n += rem > half || (rem == half && (n & 1));
  }
  if (n == 0) return sign ? -0.0f : 0.0f;
  float v = (float)n * qc_f8_pow2f(q);
  if (v > maxf) v = maxf;
  return sign ? -v : v;
}

/* Quantizes x[0..k) (stride sx) with scale s as qc_quant's fp8 per-tensor quantization does (x / s in
   f32, rounded to the minifloat (man, emin, maxf), ties to even, saturated) and stores the bf16 bits
   of each code's value (exact: fp8 values have at most 3 mantissa bits) into xb[0..kp), zero after k.
   Returns 1 if some x is not finite (the values are then unspecified), else 0. */
int qc_f8_prepare(const float *x, int64_t sx, int64_t k, float s, int man, int emin, float maxf,
                  int64_t kp, uint16_t *xb) {
  int bad = 0;
  for (int64_t j = 0; j < kp; j++) {
    if (j >= k) { xb[j] = 0; continue; }
    float v = x[j * sx];
    bad |= !__builtin_isfinite(v);
    float r = qc_f8_round(v / s, man, emin, maxf);
    uint32_t b;
    memcpy(&b, &r, 4);
    xb[j] = (uint16_t)(b >> 16);
  }
  return bad;
}

/* Sum of 16 lanes: lane l + lane l + 8, then + 4, + 2, + 1 (the order of act8's QC_HSUMF). */
static inline float qc_f8_hsum16(const float *l) {
  float t[8], u[4];
  for (int j = 0; j < 8; j++) t[j] = l[j] + l[j + 8];
  for (int j = 0; j < 4; j++) u[j] = t[j] + t[j + 4];
  return (u[0] + u[2]) + (u[1] + u[3]);
}

/* out[l] (16 lanes, from 0) = the vdpbf16ps chain over w[0..len), x[0..len) (len a multiple of 16):
   for each 32 elements c, lane l += w[c+2l+1] x[c+2l+1], then += w[c+2l] x[c+2l] (each product exact,
   each sum rounded to f32, nearest even). */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static void
qc_f8_dot_bf16(const uint16_t *w, const uint16_t *x, int64_t len, float *out) {
  __m512 acc = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 32 <= len; c += 32)
    acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512((const void *)(w + c)),
                           (__m512bh)_mm512_loadu_si512((const void *)(x + c)));
  if (c < len)
    acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_maskz_loadu_epi16(0xffff, w + c),
                           (__m512bh)_mm512_maskz_loadu_epi16(0xffff, x + c));
  _mm512_storeu_ps(out, acc);
}

static inline float qc_f8_bf(uint16_t h) { return qc_f8_bits((uint32_t)h << 16); }

/* The same chain with f32 FMA (exact products, so each step is one rounded sum). */
static void qc_f8_dot_fma(const uint16_t *w, const uint16_t *x, int64_t len, float *out) {
  for (int l = 0; l < 16; l++) out[l] = 0.0f;
  for (int64_t c = 0; c < len; c += 32)
    for (int l = 0; l < 16; l++) {
      int64_t e = c + 2 * l;
      if (e >= len) {
        out[l] = out[l] + 0.0f; /* a zero-padded pair, as vdpbf16ps adds it */
        continue;
      }
      out[l] = __builtin_fmaf(qc_f8_bf(w[e + 1]), qc_f8_bf(x[e + 1]), out[l]);
      out[l] = __builtin_fmaf(qc_f8_bf(w[e]), qc_f8_bf(x[e]), out[l]);
    }
}

typedef void (*qc_f8_dot_fn)(const uint16_t *, const uint16_t *, int64_t, float *);

static inline __attribute__((always_inline)) int
qc_f8_body(qc_f8_dot_fn dot, const qc_f8_format *f, const uint8_t *codes, const uint8_t *scales,
           int64_t row_bytes, const uint16_t *xb, int64_t ldx, int64_t m, float *y, int64_t ldy,
           int64_t k, int64_t row_begin, int64_t row_end, float post) {
  const int64_t G = f->group, kp = qc_f8_padded_k(k);
  if ((f->bits != 8 && f->bits != 4) || (f->bits == 4 && k % 2) || (G > 0 && (G % 16 || k % G)) ||
      f->store < 0 || f->store > 4)
    return 1;
  const int64_t ng = G > 0 ? k / G : 1;
  const int sb = f->store == 0 ? 4 : f->store <= 2 ? 2 : 1;
  uint16_t *w = (uint16_t *)malloc((size_t)kp * 2 + 64);
  if (!w) return 2;
  float lanes[16];
  for (int64_t n = row_begin; n < row_end; n++) {
    const uint8_t *wr = codes + n * row_bytes;
    if (f->bits == 8)
      for (int64_t j = 0; j < k; j++) w[j] = f->table[wr[j]];
    else
      for (int64_t j = 0; j < k; j += 2) {
        w[j] = f->table[wr[j >> 1] & 15];
        w[j + 1] = f->table[wr[j >> 1] >> 4];
      }
    for (int64_t j = k; j < kp; j++) w[j] = 0;
    for (int64_t i = 0; i < m; i++) {
      const uint16_t *xr = xb + i * ldx;
      float acc;
      if (G > 0) {
        const uint8_t *sr = scales + n * ng * sb;
        acc = 0.0f;
        for (int64_t g = 0; g < ng; g++) {
          dot(w + g * G, xr + g * G, G, lanes);
          acc = __builtin_fmaf(qc_f8_hsum16(lanes), qc_f8_scale(f->store, sr + g * sb), acc);
        }
      } else {
        dot(w, xr, kp, lanes);
        acc = qc_f8_hsum16(lanes);
        if (G == 0) acc = acc * qc_f8_scale(f->store, scales + n * sb);
      }
      y[i * ldy + n - row_begin] = acc * post;
    }
  }
  free(w);
  return 0;
}

/* y[i ldy + n - row_begin] for i < m, n in [row_begin, row_end): the BF16 kernel (AVX512-BF16). */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) int
qc_f8_matmul_bf16(const qc_f8_format *f, const uint8_t *codes, const uint8_t *scales, int64_t row_bytes,
                  const uint16_t *xb, int64_t ldx, int64_t m, float *y, int64_t ldy, int64_t k,
                  int64_t row_begin, int64_t row_end, float post) {
  return qc_f8_body(qc_f8_dot_bf16, f, codes, scales, row_bytes, xb, ldx, m, y, ldy, k, row_begin,
                    row_end, post);
}

/* The same products with f32 FMA, for CPUs without AVX512-BF16 (bit-identical to qc_f8_matmul_bf16
   where vdpbf16ps rounds each of its two sums, as Intel documents it). */
int qc_f8_matmul_fma(const qc_f8_format *f, const uint8_t *codes, const uint8_t *scales, int64_t row_bytes,
                     const uint16_t *xb, int64_t ldx, int64_t m, float *y, int64_t ldy, int64_t k,
                     int64_t row_begin, int64_t row_end, float post) {
  return qc_f8_body(qc_f8_dot_fma, f, codes, scales, row_bytes, xb, ldx, m, y, ldy, k, row_begin,
                    row_end, post);
}
