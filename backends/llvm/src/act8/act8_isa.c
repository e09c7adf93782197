/* The vector operations of act8_body.c for instruction set QC_A8_ISA: 3 AVX-512 VNNI (vpdpbusd on
   w + 128 and x, the offset removed with 128 * sum(x)), 2 AVX-512 BW (vpmaddubsw on |w| and x with
   w's sign, then vpmaddwd), 1 AVX2 (the same on 256 bits), 4 AVX-VNNI (vpdpbusd on 256 bits). */
#define QC_CAT2(a, b) a##_##b
#define QC_CAT(a, b) QC_CAT2(a, b)
#define QC_FN(name) QC_CAT(name, QC_SFX)
#define QC_INL static inline __attribute__((always_inline)) QC_ATTR

#if QC_A8_ISA == 2 || QC_A8_ISA == 3
#if QC_A8_ISA == 3
#define QC_SFX vnni
#define QC_ATTR __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")))
#define QC_OFFSET 1
#define QC_WCONV(v) QC_XOR80(v)
#define QC_DOT(acc, w, x) _mm512_dpbusd_epi32(acc, w, x)
#else
#define QC_SFX avx512
#define QC_ATTR
#define QC_OFFSET 0
#define QC_WCONV(v) (v)
/* |w| (u8, at most 128) times x with w's sign (|x| <= 127): pair sums at most 2 * 128 * 127 < 2^15. */
#define QC_DOT(acc, w, x)                                                                      \
  _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(w),             \
                                                               _mm512_mask_sub_epi8(           \
                                                                   x, _mm512_movepi8_mask(w),  \
                                                                   _mm512_setzero_si512(), x)), \
                                          _mm512_set1_epi16(1)))
#endif
#define QC_W 16
#define QC_ADD32(a, b) _mm512_add_epi32(a, b)
#define QC_SUB32(a, b) _mm512_sub_epi32(a, b)
#define QC_SET1D(v) _mm512_set1_epi32(v)
#define QC_SET1F(v) _mm512_set1_ps(v)
#define QC_MULF(a, b) _mm512_mul_ps(a, b)
#define QC_STF(p, v) _mm512_storeu_ps(p, v)
#define QC_VB 64
#define QC_VI __m512i
#define QC_VF __m512
#define QC_LD(p) _mm512_loadu_si512((const void *)(p))
#define QC_ZI() _mm512_setzero_si512()
#define QC_ZF() _mm512_setzero_ps()
#define QC_SET1B(c) _mm512_set1_epi8((char)(c))
#define QC_AND(a, b) _mm512_and_si512(a, b)
#define QC_XOR80(a) _mm512_xor_si512(a, _mm512_set1_epi8((char)0x80))
#define QC_SRL16(a, n) _mm512_srli_epi16(a, n)
#define QC_SHUF(t, i) _mm512_shuffle_epi8(t, i)
#define QC_BCAST16(p) _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(p)))
#define QC_PAIR(a, b)                                                                               \
  _mm512_add_epi32(                                                                                 \
      _mm512_permutex2var_epi32(a, _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8,  \
                                                    6, 4, 2, 0),                                    \
                                b),                                                                 \
      _mm512_permutex2var_epi32(a, _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, \
                                                    7, 5, 3, 1),                                    \
                                b))
#define QC_SUBX(t, p) _mm512_sub_epi32(t, _mm512_slli_epi32(_mm512_loadu_si512((const void *)(p)), 7))
#define QC_CVT(a) _mm512_cvtepi32_ps(a)
#define QC_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define QC_LDF(p) _mm512_loadu_ps(p)
#define QC_HSUMF(v) \
  qc_a8_hsum8(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)))
#define QC_STI(p, v) _mm512_storeu_si512((void *)(p), v)
/* 16 scales at p, decoded exactly: f32, f16, bf16, e8m0 (0: 2^-127, 255: NaN), ue4m3 (sign ignored,
   0x7f: NaN). */
QC_INL __m512 QC_FN(qc_a8_scales)(int store, const uint8_t *p) {
  switch (store) {
  case 0: return _mm512_loadu_ps(p);
  case 1: return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
  case 2:
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
  case 3: {
    __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
    __m512i b = _mm512_slli_epi32(c, 23);
    b = _mm512_mask_mov_epi32(b, _mm512_cmpeq_epi32_mask(c, _mm512_setzero_si512()),
                              _mm512_set1_epi32(0x00400000));
    b = _mm512_mask_mov_epi32(b, _mm512_cmpeq_epi32_mask(c, _mm512_set1_epi32(255)),
                              _mm512_set1_epi32(0x7fc00000));
    return _mm512_castsi512_ps(b);
  }
  default: {
    __m512i c = _mm512_and_si512(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)),
                                 _mm512_set1_epi32(0x7f));
    __m512 nrm = _mm512_castsi512_ps(
        _mm512_add_epi32(_mm512_slli_epi32(c, 20), _mm512_set1_epi32(120 << 23)));
    __m512 sub = _mm512_mul_ps(_mm512_cvtepi32_ps(c), _mm512_set1_ps(0x1p-9f));
    __m512 v = _mm512_mask_blend_ps(_mm512_cmplt_epi32_mask(c, _mm512_set1_epi32(8)), nrm, sub);
    return _mm512_mask_blend_ps(_mm512_cmpeq_epi32_mask(c, _mm512_set1_epi32(0x7f)), v,
                                _mm512_set1_ps(__builtin_nanf("")));
  }
  }
}
#else
#if QC_A8_ISA == 4
/* AVX-VNNI (VEX vpdpbusd on 256 bits), as AVX-512 VNNI: w + 128 by x, corrected by 128 * sum(x). */
#define QC_SFX avxvnni
#define QC_ATTR __attribute__((target("avx2,avxvnni")))
#define QC_OFFSET 1
#define QC_WCONV(v) QC_XOR80(v)
#define QC_DOT(acc, w, x) _mm256_dpbusd_avx_epi32(acc, w, x)
#else
#define QC_SFX avx2
#define QC_ATTR
#define QC_OFFSET 0
#define QC_WCONV(v) (v)
#define QC_DOT(acc, w, x)                                                                          \
  _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w),                 \
                                                               _mm256_sign_epi8(x, w)),            \
                                          _mm256_set1_epi16(1)))
#endif
#define QC_W 8
#define QC_ADD32(a, b) _mm256_add_epi32(a, b)
#define QC_SUB32(a, b) _mm256_sub_epi32(a, b)
#define QC_SET1D(v) _mm256_set1_epi32(v)
#define QC_SET1F(v) _mm256_set1_ps(v)
#define QC_MULF(a, b) _mm256_mul_ps(a, b)
#define QC_STF(p, v) _mm256_storeu_ps(p, v)
#define QC_VB 32
#define QC_VI __m256i
#define QC_VF __m256
#define QC_LD(p) _mm256_loadu_si256((const __m256i *)(p))
#define QC_ZI() _mm256_setzero_si256()
#define QC_ZF() _mm256_setzero_ps()
#define QC_SET1B(c) _mm256_set1_epi8((char)(c))
#define QC_AND(a, b) _mm256_and_si256(a, b)
#define QC_XOR80(a) _mm256_xor_si256(a, _mm256_set1_epi8((char)0x80))
#define QC_SRL16(a, n) _mm256_srli_epi16(a, n)
#define QC_SHUF(t, i) _mm256_shuffle_epi8(t, i)
#define QC_BCAST16(p) _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(p)))
#define QC_PAIR(a, b) _mm256_permute4x64_epi64(_mm256_hadd_epi32(a, b), 0xD8)
#define QC_SUBX(t, p) \
  _mm256_sub_epi32(t, _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(p)), 7))
#define QC_CVT(a) _mm256_cvtepi32_ps(a)
#define QC_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define QC_LDF(p) _mm256_loadu_ps(p)
#define QC_HSUMF(v) qc_a8_hsum8(v)
#define QC_STI(p, v) _mm256_storeu_si256((__m256i *)(p), v)
/* 8 scales at p, decoded exactly (as on AVX-512). */
QC_INL __m256 QC_FN(qc_a8_scales)(int store, const uint8_t *p) {
  switch (store) {
  case 0: return _mm256_loadu_ps((const float *)p);
  case 1: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
  case 2:
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
  case 3: {
    __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    __m256i b = _mm256_slli_epi32(c, 23);
    b = _mm256_blendv_epi8(b, _mm256_set1_epi32(0x00400000),
                           _mm256_cmpeq_epi32(c, _mm256_setzero_si256()));
    b = _mm256_blendv_epi8(b, _mm256_set1_epi32(0x7fc00000),
                           _mm256_cmpeq_epi32(c, _mm256_set1_epi32(255)));
    return _mm256_castsi256_ps(b);
  }
  default: {
    __m256i c = _mm256_and_si256(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)),
                                 _mm256_set1_epi32(0x7f));
    __m256 nrm = _mm256_castsi256_ps(
        _mm256_add_epi32(_mm256_slli_epi32(c, 20), _mm256_set1_epi32(120 << 23)));
    __m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(c), _mm256_set1_ps(0x1p-9f));
    __m256 v = _mm256_blendv_ps(nrm, sub, _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(8), c)));
    return _mm256_blendv_ps(v, _mm256_set1_ps(__builtin_nanf("")),
                            _mm256_castsi256_ps(_mm256_cmpeq_epi32(c, _mm256_set1_epi32(0x7f))));
  }
  }
}
#endif
