/* Quantized matrix products with int8 activations (qc_backend_llvm::act8; contracts in act8/mod.rs).
   This part is target independent; act8_body.c follows once per instruction set. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <immintrin.h>

/* A weight format as the kernels read it (act8::A8Format). */
typedef struct {
  int32_t elem;     /* 0: 8-bit two's-complement codes; 1: 4-bit codes, lo_first, through `table` */
  int32_t group;    /* > 0: elements per scale (a power of two, 16..256); 0: one scale per row; -1: none */
  int32_t store;    /* scale storage: 0 f32, 1 f16, 2 bf16, 3 e8m0, 4 ue4m3 */
  int32_t reserved;
  int8_t table[16]; /* elem 1: the integer value of each code */
} qc_a8_format;

/* Products with at least this many activation rows run the GEMM kernels (weight panels). */
#define QC_A8_GEMM_MIN_ROWS 32

/* The GEMV kernels prefetch the code bytes this far ahead (scales: an eighth of it); prefetches never
   fault, so they may run past the blob. */
#define QC_A8_PF 16384

static const uint32_t qc_a8_e8m0_bits[256] = { QC_A8_E8M0_TABLE };
static const uint32_t qc_a8_ue4m3_bits[256] = { QC_A8_UE4M3_TABLE };

static inline int qc_a8_scale_bytes(int store) {
  return store == 0 ? 4 : store <= 2 ? 2 : 1;
}

/* The value of the stored scale at p (exact: every store decodes exactly to f32). */
static inline float qc_a8_scale(int store, const uint8_t *p) {
  uint32_t b;
  float f;
  switch (store) {
  case 0: memcpy(&f, p, 4); return f;
  case 1: { uint16_t h; memcpy(&h, p, 2); return _cvtsh_ss(h); }
  case 2: { uint16_t h; memcpy(&h, p, 2); b = (uint32_t)h << 16; break; }
  case 3: b = qc_a8_e8m0_bits[p[0]]; break;
  default: b = qc_a8_ue4m3_bits[p[0]]; break;
  }
  memcpy(&f, &b, 4);
  return f;
}

/* Elements of one superblock: `lanes` groups (group formats), else one vector unit. */
static inline int64_t qc_a8_superblock(int elem, int64_t group, int64_t vb) {
  int64_t unit = 2 * vb; /* the prepare block (elem 0: two vectors) */
  if (group > 0 && (vb / 4) * group > unit) return (vb / 4) * group;
  return unit;
}

/* K rounded up to whole superblocks: the length of a prepared activation row. */
int64_t qc_a8_padded_k(int elem, int64_t group, int64_t vb, int64_t k) {
  int64_t sb = qc_a8_superblock(elem, group, vb);
  return (k + sb - 1) / sb * sb;
}

/* The int8 code of v: rint_even(v / s) saturated to [-127, 127], NaN to 0 (qc_quant's arithmetic). */
static inline int8_t qc_a8_q(float v, float s) {
  float r = __builtin_rintf(v / s);
  r = r != r ? 0.0f : r;
  r = r < -127.0f ? -127.0f : r;
  r = r > 127.0f ? 127.0f : r;
  return (int8_t)(int32_t)r;
}

/* Quantizes x[0..k) (stride sx) with scale s exactly as qc_quant's int8 per-tensor quantization does
   (x / s in f32, rounded half to even, saturated to [-127, 127]) into xq[0..kp) in the kernel layout
   (elem 1: each block of 2 vb elements holds its even elements, then its odd ones), zero after k, and
   the sums of the codes of each group (group > 0: kp / group sums; else one sum) into xsum. Returns 1
   if some x is not finite (the codes are then unspecified), else 0. kp is a multiple of 2 vb and of
   the group (qc_a8_padded_k). */
int qc_a8_prepare(const float *x, int64_t sx, int64_t k, float s, int elem, int64_t group, int64_t vb,
                  int64_t kp, int8_t *xq, int32_t *xsum) {
  uint32_t bad = 0;
  const int64_t blk = 2 * vb; /* 64 or 128 elements */
  int64_t ng = group > 0 ? kp / group : 1;
  for (int64_t g = 0; g < ng; g++) xsum[g] = 0;
  int32_t total = 0;
  for (int64_t b = 0; b < kp; b += blk) {
    int8_t t[128] __attribute__((aligned(64)));
    if (b + blk <= k && sx == 1) {
      const float *xb = x + b;
      for (int64_t e = 0; e < blk; e++) {
        uint32_t u;
        memcpy(&u, &xb[e], 4);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
        t[e] = qc_a8_q(xb[e], s);
      }
    } else {
      for (int64_t e = 0; e < blk; e++) {
        int64_t j = b + e;
        float v = j < k ? x[j * sx] : 0.0f;
        bad |= !__builtin_isfinite(v);
        t[e] = j < k ? qc_a8_q(v, s) : 0;
      }
    }
    if (elem == 1) {
      for (int64_t e = 0; e < vb; e++) {
        xq[b + e] = t[2 * e];
        xq[b + vb + e] = t[2 * e + 1];
      }
    } else {
      memcpy(xq + b, t, (size_t)blk);
    }
    if (group > 0) {
      for (int64_t g0 = 0; g0 < blk; g0 += group < blk ? group : blk) {
        int64_t len = group < blk ? group : blk;
        int32_t sum = 0;
        for (int64_t e = 0; e < len; e++) sum += t[g0 + e];
        xsum[(b + g0) / group] += sum;
      }
    } else {
      int32_t sum = 0;
      for (int64_t e = 0; e < blk; e++) sum += t[e];
      total += sum;
    }
  }
  if (group <= 0) xsum[0] = total;
  return bad != 0;
}

/* The int8 codes of x in element order, undoing the layout of qc_a8_prepare (for tests). */
void qc_a8_unpermute(const int8_t *xq, int elem, int64_t vb, int64_t k, int8_t *out) {
  for (int64_t j = 0; j < k; j++) {
    int64_t pos = j;
    if (elem == 1) {
      int64_t b = j / (2 * vb) * (2 * vb), e = j - b;
      pos = b + (e & 1) * vb + e / 2;
    }
    out[j] = xq[pos];
  }
}

/* Sum of the 8 lanes: (0 + 4, 1 + 5, 2 + 6, 3 + 7), then (a + c, b + d), then the two. */
static inline float qc_a8_hsum8(__m256 v) {
  __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_add_ps(a, _mm_movehl_ps(a, a));
  a = _mm_add_ss(a, _mm_movehdup_ps(a));
  return _mm_cvtss_f32(a);
}
