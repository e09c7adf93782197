/* The kernels of one instruction set (act8/mod.rs): included once per set after defining QC_SFX (the
   symbol suffix), QC_ATTR (its target attribute), QC_W (i32 lanes), QC_VB (bytes per vector),
   QC_OFFSET (1: u8 x s8 products of (w + 128) and x, corrected by 128 * sum(x)) and the vector
   operations QC_VI, QC_VF, QC_LD, QC_ZI, QC_ZF, QC_SET1B, QC_AND, QC_SRL16, QC_SHUF, QC_BCAST16,
   QC_WCONV (a vector of int8 weights as the dot product's first operand), QC_DOT (acc + the sums of
   4 consecutive byte products per i32 lane), QC_PAIR (pairwise lane sums of a then b), QC_ADD32, QC_SUB32, QC_SET1D, QC_SET1F, QC_MULF, QC_STF, QC_SUBX
   (t - 128 * the i32 sums at p), QC_CVT, QC_FMA, QC_LDF, QC_XOR80 (flip bit 7 of every byte), QC_HSUMF (float lane sum: halves, in
   order), QC_STI (store i32 lanes), and the function qc_a8_scales (QC_W scales decoded exactly). */

/* Unit p of a row (QC_VB code bytes): elem 0 one vector of weights, elem 1 the low (even elements)
   and high (odd elements) nibbles through the table. */
QC_INL void QC_FN(qc_a8_w)(const int elem, const uint8_t *p, QC_VI tab, QC_VI *lo, QC_VI *hi) {
  QC_VI v = QC_LD(p);
  if (elem == 0) {
    *lo = QC_WCONV(v);
    *hi = v;
  } else {
    QC_VI m = QC_SET1B(0x0f);
    *lo = QC_SHUF(tab, QC_AND(v, m));
    *hi = QC_SHUF(tab, QC_AND(QC_SRL16(v, 4), m));
  }
}

QC_INL QC_VI QC_FN(qc_a8_udot)(const int elem, QC_VI acc, QC_VI lo, QC_VI hi, const int8_t *xq) {
  acc = QC_DOT(acc, lo, QC_LD(xq));
  if (elem == 1) acc = QC_DOT(acc, hi, QC_LD(xq + QC_VB));
  return acc;
}

/* One superblock (QC_W groups of G elements) of weight row bytes wp against MT activation rows:
   acc[i] = fma((float)isum_g, scale_g, acc[i]) lane-wise, lane l holding group l of the superblock.
   `valid`: elements of the superblock inside the row (units past it are skipped). */
QC_INL void QC_FN(qc_a8_sb)(const int elem, const int G, const int MT, const int tail, int64_t valid,
                            const uint8_t *wp, QC_VI tab, QC_VF sv, const int8_t *xq, int64_t ldq,
                            const int32_t *xs, int64_t lds, int mt, QC_VF *acc) {
  const int UE = (elem == 1 ? 2 : 1) * QC_VB, U = UE / QC_W, L = G / U, A = L < QC_W ? L : QC_W,
            P = L < QC_W ? 1 : L / QC_W, NU = A * P;
  QC_VI wl[32], wh[32];
  if (MT > 1) {
#pragma GCC unroll 32
    for (int u = 0; u < NU; u++) {
      if (tail && (int64_t)u * UE >= valid) { wl[u] = QC_ZI(); wh[u] = QC_ZI(); continue; }
      QC_FN(qc_a8_w)(elem, wp + (int64_t)u * QC_VB, tab, &wl[u], &wh[u]);
    }
  }
  (void)mt; /* MT > 1 runs whole tiles only (qc_a8_matmul) */
  for (int i = 0; i < MT; i++) {
    const int8_t *xr = xq + i * ldq;
    QC_VI a[QC_W];
#pragma GCC unroll 16
    for (int j = 0; j < A; j++) {
      a[j] = QC_ZI();
#pragma GCC unroll 16
      for (int p = 0; p < P; p++) {
        int u = j * P + p;
        if (tail && (int64_t)u * UE >= valid) continue;
        QC_VI lo, hi;
        if (MT > 1) { lo = wl[u]; hi = wh[u]; }
        else {
          if (!tail) _mm_prefetch((const char *)(wp + (int64_t)u * QC_VB + QC_A8_PF), _MM_HINT_T0);
          QC_FN(qc_a8_w)(elem, wp + (int64_t)u * QC_VB, tab, &lo, &hi);
        }
        a[j] = QC_FN(qc_a8_udot)(elem, a[j], lo, hi, xr + (int64_t)u * UE);
      }
    }
#pragma GCC unroll 8
    for (int w = A; w > 1; w /= 2)
#pragma GCC unroll 8
      for (int j = 0; j < w / 2; j++) a[j] = QC_PAIR(a[2 * j], a[2 * j + 1]);
    QC_VI t = a[0];
    if (QC_OFFSET) t = QC_SUBX(t, xs + i * lds);
    acc[i] = QC_FMA(QC_CVT(t), sv, acc[i]);
  }
}

/* Group formats: rows [r0, r1) of W against m activation rows. */
QC_INL void QC_FN(qc_a8_group)(const int elem, const int G, const int MT, int store, QC_VI tab,
                               const uint8_t *codes, const uint8_t *scales, const int8_t *xq,
                               const int32_t *xsum, int64_t ldq, int64_t lds, int64_t m, float *y,
                               int64_t ldy, int64_t k, int64_t r0, int64_t r1, float post) {
  const int64_t SB = (int64_t)QC_W * G, CB = SB / (elem == 1 ? 2 : 1);
  const int64_t row_bytes = elem == 1 ? k / 2 : k, ng = k / G, nsb = (k + SB - 1) / SB;
  const int sbytes = qc_a8_scale_bytes(store);
  const int64_t NB = 64, IB = MT > 1 ? 64 : 1;
  for (int64_t n0 = r0; n0 < r1; n0 += NB) {
    int64_t n1 = n0 + NB < r1 ? n0 + NB : r1;
    for (int64_t i0 = 0; i0 < m; i0 += IB) {
      int64_t i1 = i0 + IB < m ? i0 + IB : m;
      for (int64_t n = n0; n < n1; n++) {
        const uint8_t *wrow = codes + n * row_bytes, *srow = scales + n * ng * sbytes;
        for (int64_t it = i0; it < i1; it += MT) {
          int mt = (int)(i1 - it < MT ? i1 - it : MT);
          QC_VF acc[MT];
          for (int i = 0; i < MT; i++) acc[i] = QC_ZF();
          for (int64_t b = 0; b < nsb; b++) {
            int64_t g0 = b * QC_W, gv = ng - g0 < QC_W ? ng - g0 : QC_W;
            QC_VF sv;
            if (gv == QC_W) {
              if (MT == 1) _mm_prefetch((const char *)(srow + g0 * sbytes + QC_A8_PF / 8), _MM_HINT_T0);
              sv = QC_FN(qc_a8_scales)(store, srow + g0 * sbytes);
            } else {
              uint8_t sb[QC_W * 4] __attribute__((aligned(64)));
              memset(sb, 0, sizeof sb);
              memcpy(sb, srow + g0 * sbytes, (size_t)(gv * sbytes));
              sv = QC_FN(qc_a8_scales)(store, sb);
            }
            const int8_t *xb = xq + it * ldq + b * SB;
            const int32_t *xs = xsum + it * lds + g0;
            if (gv == QC_W) {
              QC_FN(qc_a8_sb)(elem, G, MT, 0, SB, wrow + b * CB, tab, sv, xb, ldq, xs, lds, mt, acc);
            } else {
              uint8_t tb[QC_W * 128] __attribute__((aligned(64)));
              memset(tb, 0, (size_t)CB);
              memcpy(tb, wrow + b * CB, (size_t)(gv * G / (elem == 1 ? 2 : 1)));
              QC_FN(qc_a8_sb)(elem, G, MT, 1, gv * G, tb, tab, sv, xb, ldq, xs, lds, mt, acc);
            }
          }
          for (int i = 0; i < mt; i++) y[(it + i) * ldy + (n - r0)] = QC_HSUMF(acc[i]) * post;
        }
      }
    }
  }
}

/* One scale per row (group 0) or none (group -1): an exact integer dot product per row. */
QC_INL void QC_FN(qc_a8_row)(const int elem, const int MT, int group, int store, QC_VI tab,
                             const uint8_t *codes, const uint8_t *scales, const int8_t *xq,
                             const int32_t *xsum, int64_t ldq, int64_t lds, int64_t m, float *y,
                             int64_t ldy, int64_t k, int64_t r0, int64_t r1, float post) {
  const int UE = (elem == 1 ? 2 : 1) * QC_VB;
  const int64_t row_bytes = elem == 1 ? k / 2 : k, nu = (k + UE - 1) / UE, full = k / UE;
  const int sbytes = qc_a8_scale_bytes(store);
  const int64_t NB = 64, IB = MT > 1 ? 64 : 1;
  for (int64_t n0 = r0; n0 < r1; n0 += NB) {
    int64_t n1 = n0 + NB < r1 ? n0 + NB : r1;
    for (int64_t i0 = 0; i0 < m; i0 += IB) {
      int64_t i1 = i0 + IB < m ? i0 + IB : m;
      for (int64_t n = n0; n < n1; n++) {
        const uint8_t *wrow = codes + n * row_bytes;
        float rs = group == 0 ? qc_a8_scale(store, scales + n * sbytes) : 1.0f;
        uint8_t tb[QC_VB] __attribute__((aligned(64)));
        if (full < nu) {
          memset(tb, 0, sizeof tb);
          memcpy(tb, wrow + full * QC_VB, (size_t)(row_bytes - full * QC_VB));
        }
        for (int64_t it = i0; it < i1; it += MT) {
          int mt = (int)(i1 - it < MT ? i1 - it : MT);
          /* Integer sums are exact, so the chains may be split freely: 4 per row when MT = 1. */
          QC_VI ia[MT > 1 ? MT : 4];
          for (int i = 0; i < (MT > 1 ? MT : 4); i++) ia[i] = QC_ZI();
          int64_t u = 0;
          if (MT == 1) {
            for (; u + 4 <= full; u += 4) {
#pragma GCC unroll 4
              for (int c = 0; c < 4; c++) {
                QC_VI lo, hi;
                _mm_prefetch((const char *)(wrow + (u + c) * QC_VB + QC_A8_PF), _MM_HINT_T0);
                QC_FN(qc_a8_w)(elem, wrow + (u + c) * QC_VB, tab, &lo, &hi);
                ia[c] = QC_FN(qc_a8_udot)(elem, ia[c], lo, hi, xq + it * ldq + (u + c) * UE);
              }
            }
            ia[0] = QC_ADD32(QC_ADD32(ia[0], ia[1]), QC_ADD32(ia[2], ia[3]));
          }
          for (; u < nu; u++) {
            QC_VI lo, hi;
            QC_FN(qc_a8_w)(elem, u < full ? wrow + u * QC_VB : tb, tab, &lo, &hi);
            for (int i = 0; i < MT; i++)
              ia[i] = QC_FN(qc_a8_udot)(elem, ia[i], lo, hi, xq + (it + i) * ldq + u * UE);
          }
          for (int i = 0; i < mt; i++) {
            int32_t lanes[QC_W];
            QC_STI(lanes, ia[i]);
            int64_t s = 0;
            for (int l = 0; l < QC_W; l++) s += lanes[l];
            if (QC_OFFSET) s -= 128 * (int64_t)xsum[(it + i) * lds];
            y[(it + i) * ldy + (n - r0)] = (float)s * rs * post;
          }
        }
      }
    }
  }
}

/* ---- GEMM (m >= QC_A8_GEMM_MIN_ROWS): weight panels of QC_W rows, x broadcast 4 codes at a time. ----
   A panel holds, for each 4-position step s of the prepared x layout, one vector of QC_W dwords: lane
   l = the 4 decoded weights of row n0 + l at those positions. Each output lane is then one (x row,
   weight row) pair, so no horizontal sums are needed. */

/* Decodes weight rows [n0, n0 + nr) into the panel (lanes >= nr: zero weights), and their scales
   (group formats: psc[g * QC_W + l] for the k / G groups; row formats: psc[l]; 0 for lanes >= nr). */
QC_INL void QC_FN(qc_a8_pack)(const int elem, int G, int group, int store, QC_VI tab,
                              const uint8_t *codes, const uint8_t *scales, int64_t k, int64_t kp,
                              int64_t n0, int nr, uint32_t *panel, float *psc, int8_t *tmp) {
  const int64_t UE = (elem == 1 ? 2 : 1) * QC_VB, row_bytes = elem == 1 ? k / 2 : k;
  const int64_t full = k / UE, ng = G > 0 ? k / G : 1;
  const int sbytes = qc_a8_scale_bytes(store);
  for (int l = 0; l < QC_W; l++) {
    if (l < nr) {
      const uint8_t *wrow = codes + (n0 + l) * row_bytes;
      for (int64_t u = 0; u < kp / UE; u++) {
        uint8_t tb[QC_VB] __attribute__((aligned(64)));
        const uint8_t *src = wrow + u * QC_VB;
        if (u >= full) {
          memset(tb, 0, sizeof tb);
          if (u == full) memcpy(tb, wrow + full * QC_VB, (size_t)(row_bytes - full * QC_VB));
          src = tb;
        }
        QC_VI lo, hi;
        QC_FN(qc_a8_w)(elem, src, tab, &lo, &hi);
        QC_STI(tmp + u * UE, lo);
        if (elem == 1) QC_STI(tmp + u * UE + QC_VB, hi);
      }
    } else {
      memset(tmp, QC_OFFSET ? 0x80 : 0, (size_t)kp);
    }
    for (int64_t st = 0; st < kp / 4; st++) memcpy(&panel[st * QC_W + l], tmp + 4 * st, 4);
    if (G > 0) {
      const uint8_t *srow = scales + (n0 + l) * ng * sbytes;
      for (int64_t g = 0; g < ng; g++)
        psc[g * QC_W + l] = l < nr ? qc_a8_scale(store, srow + g * sbytes) : 0.0f;
    } else {
      psc[l] = l >= nr ? 0.0f : group == 0 ? qc_a8_scale(store, scales + (n0 + l) * sbytes) : 1.0f;
    }
  }
}

/* MR (1, 4 or 8) activation rows against one panel: group formats acc = fma((float)isum_g, scale_g,
   acc) over the groups in order; row formats acc = (float)isum * s_n. The accumulators are named
   variables (arrays of vectors stay in memory with GCC). */
#define QC_A8_REP(MR, X)                                                                           \
  do {                                                                                             \
    X(0);                                                                                          \
    if (MR > 1) { X(1); X(2); X(3); }                                                              \
    if (MR > 4) { X(4); X(5); X(6); X(7); }                                                        \
  } while (0)
QC_INL void QC_FN(qc_a8_tile)(const int MR, const int elem, const int G, int64_t ng, int64_t kp,
                              const uint32_t *panel, const float *psc, const int8_t *xq, int64_t ldq,
                              const int32_t *xsum, int64_t lds, QC_VF *accf) {
  const int64_t GE = G > 0 ? G : kp; /* positions per group */
  QC_VF f0 = QC_ZF(), f1 = QC_ZF(), f2 = QC_ZF(), f3 = QC_ZF(), f4 = QC_ZF(), f5 = QC_ZF(),
        f6 = QC_ZF(), f7 = QC_ZF();
  const int8_t *x0 = xq, *x1 = xq + ldq, *x2 = xq + 2 * ldq, *x3 = xq + 3 * ldq,
               *x4 = xq + 4 * ldq, *x5 = xq + 5 * ldq, *x6 = xq + 6 * ldq, *x7 = xq + 7 * ldq;
  for (int64_t g = 0; g < ng; g++) {
    QC_VI a0 = QC_ZI(), a1 = QC_ZI(), a2 = QC_ZI(), a3 = QC_ZI(), a4 = QC_ZI(), a5 = QC_ZI(),
          a6 = QC_ZI(), a7 = QC_ZI();
    int64_t p0 = g * GE, p1 = -1, len = GE;
    if (elem == 1 && G > 0 && G < 2 * QC_VB) {
      int64_t b = g * G / (2 * QC_VB) * (2 * QC_VB), lg = (g * G - b) / G;
      p0 = b + lg * G / 2;
      p1 = p0 + QC_VB;
      len = G / 2;
    }
    /* The steps of the group: one range of positions, or two (the even and the odd half). */
    int64_t s0 = p0 / 4, s1 = (p0 + len) / 4, t0 = p1 >= 0 ? p1 / 4 : 0,
            t1 = p1 >= 0 ? (p1 + len) / 4 : 0;
#define QC_A8_DOT1(r)                                                                              \
  do {                                                                                             \
    int32_t xd;                                                                                    \
    memcpy(&xd, x##r + 4 * st, 4);                                                                 \
    a##r = QC_DOT(a##r, wv, QC_SET1D(xd));                                                         \
  } while (0)
    for (int64_t st = s0; st < s1; st++) {
      QC_VI wv = QC_LD(panel + st * QC_W);
      QC_A8_REP(MR, QC_A8_DOT1);
    }
    for (int64_t st = t0; st < t1; st++) {
      QC_VI wv = QC_LD(panel + st * QC_W);
      QC_A8_REP(MR, QC_A8_DOT1);
    }
#undef QC_A8_DOT1
    QC_VF sv = QC_LDF(psc + (G > 0 ? g * QC_W : 0));
#define QC_A8_FIN(r)                                                                               \
  do {                                                                                             \
    QC_VI t = a##r;                                                                                \
    if (QC_OFFSET) t = QC_SUB32(t, QC_SET1D(128 * xsum[r * lds + g]));                             \
    f##r = G > 0 ? QC_FMA(QC_CVT(t), sv, f##r) : QC_MULF(QC_CVT(t), sv);                           \
  } while (0)
    QC_A8_REP(MR, QC_A8_FIN);
#undef QC_A8_FIN
  }
#define QC_A8_OUT(r) accf[r] = f##r
  QC_A8_REP(MR, QC_A8_OUT);
#undef QC_A8_OUT
}

QC_INL int QC_FN(qc_a8_gemm)(const int elem, const int G, int group, int store, QC_VI tab,
                             const uint8_t *codes, const uint8_t *scales, const int8_t *xq,
                             const int32_t *xsum, int64_t ldq, int64_t lds, int64_t m, float *y,
                             int64_t ldy, int64_t k, int64_t r0, int64_t r1, float post) {
  enum { NP = 4, IB = 64, MR = QC_W == 16 ? 8 : 4 };
  const int64_t kp = ldq, ng = G > 0 ? k / G : 1, pstride = kp / 4 * QC_W;
  uint32_t *panels = (uint32_t *)aligned_alloc(64, (size_t)(NP * pstride * 4));
  float *psc = (float *)malloc((size_t)(NP * ng * QC_W * 4 + 64));
  int8_t *tmp = (int8_t *)aligned_alloc(64, (size_t)(kp + 64) / 64 * 64);
  if (!panels || !psc || !tmp) {
    free(panels);
    free(psc);
    free(tmp);
    return 2;
  }
  for (int64_t n0 = r0; n0 < r1; n0 += NP * QC_W) {
    int np = (int)((r1 - n0 + QC_W - 1) / QC_W);
    if (np > NP) np = NP;
    for (int p = 0; p < np; p++) {
      int64_t a = n0 + p * QC_W;
      int nr = (int)(r1 - a < QC_W ? r1 - a : QC_W);
      QC_FN(qc_a8_pack)(elem, G, group, store, tab, codes, scales, k, kp, a, nr,
                        panels + p * pstride, psc + p * ng * QC_W, tmp);
    }
    for (int64_t i0 = 0; i0 < m; i0 += IB) {
      int64_t i1 = i0 + IB < m ? i0 + IB : m;
      for (int p = 0; p < np; p++) {
        int64_t a = n0 + p * QC_W;
        int nr = (int)(r1 - a < QC_W ? r1 - a : QC_W);
        for (int64_t i = i0; i < i1;) {
          QC_VF accf[MR];
          int rows = i + MR <= i1 ? MR : 1;
          if (rows == MR)
            QC_FN(qc_a8_tile)(MR, elem, G, ng, kp, panels + p * pstride, psc + p * ng * QC_W,
                              xq + i * ldq, ldq, xsum + i * lds, lds, accf);
          else
            QC_FN(qc_a8_tile)(1, elem, G, ng, kp, panels + p * pstride, psc + p * ng * QC_W,
                              xq + i * ldq, ldq, xsum + i * lds, lds, accf);
          for (int r = 0; r < rows; r++) {
            float out[QC_W];
            QC_STF(out, QC_MULF(accf[r], QC_SET1F(post)));
            memcpy(y + (i + r) * ldy + (a - r0), out, (size_t)nr * 4);
          }
          i += rows;
        }
      }
    }
  }
  free(panels);
  free(psc);
  free(tmp);
  return 0;
}

#define QC_A8_GCASE(E, G)                                                                         \
  case E * 1000 + G:                                                                              \
    return QC_FN(qc_a8_gemm)(E, G, f->group, f->store, tab, codes, scales, xq, xsum, ldq, lds, m, y, \
                             ldy, k, r0, r1, post);

#define QC_A8_CASE4(E, G)                                                                         \
  case E * 1000 + G:                                                                              \
    QC_FN(qc_a8_group)(E, G, 4, f->store, tab, codes, scales, xq, xsum, ldq, lds, m, y, ldy, k,   \
                       r0, r1, post);                                                             \
    return 0;
#define QC_A8_CASE1(E, G)                                                                         \
  case E * 1000 + G:                                                                              \
    QC_FN(qc_a8_group)(E, G, 1, f->store, tab, codes, scales, xq, xsum, ldq, lds, m, y, ldy, k,   \
                       r0, r1, post);                                                             \
    return 0;

QC_INL int QC_FN(qc_a8_gemv4)(const qc_a8_format *f, QC_VI tab, const uint8_t *codes,
                               const uint8_t *scales, const int8_t *xq, const int32_t *xsum,
                               int64_t ldq, int64_t lds, int64_t m, float *y, int64_t ldy,
                               int64_t k, int64_t r0, int64_t r1, float post) {
  if (f->group <= 0) {
    if (f->elem == 0) {
      QC_FN(qc_a8_row)(0, 4, f->group, f->store, tab, codes, scales, xq, xsum, ldq, lds, m, y, ldy, k, r0, r1, post);
    } else {
      QC_FN(qc_a8_row)(1, 4, f->group, f->store, tab, codes, scales, xq, xsum, ldq, lds, m, y, ldy, k, r0, r1, post);
    }
    return 0;
  }
  switch (f->elem * 1000 + f->group) {
    QC_A8_CASE4(0, 16)
    QC_A8_CASE4(0, 32)
    QC_A8_CASE4(0, 64)
    QC_A8_CASE4(0, 128)
    QC_A8_CASE4(1, 16)
    QC_A8_CASE4(1, 32)
    QC_A8_CASE4(1, 64)
    QC_A8_CASE4(1, 128)
  default:
    return 1;
  }
}

QC_INL int QC_FN(qc_a8_gemv1)(const qc_a8_format *f, QC_VI tab, const uint8_t *codes,
                               const uint8_t *scales, const int8_t *xq, const int32_t *xsum,
                               int64_t ldq, int64_t lds, int64_t m, float *y, int64_t ldy,
                               int64_t k, int64_t r0, int64_t r1, float post) {
  if (f->group <= 0) {
    if (f->elem == 0) {
      QC_FN(qc_a8_row)(0, 1, f->group, f->store, tab, codes, scales, xq, xsum, ldq, lds, m, y, ldy, k, r0, r1, post);
    } else {
      QC_FN(qc_a8_row)(1, 1, f->group, f->store, tab, codes, scales, xq, xsum, ldq, lds, m, y, ldy, k, r0, r1, post);
    }
    return 0;
  }
  switch (f->elem * 1000 + f->group) {
    QC_A8_CASE1(0, 16)
    QC_A8_CASE1(0, 32)
    QC_A8_CASE1(0, 64)
    QC_A8_CASE1(0, 128)
    QC_A8_CASE1(1, 16)
    QC_A8_CASE1(1, 32)
    QC_A8_CASE1(1, 64)
    QC_A8_CASE1(1, 128)
  default:
    return 1;
  }
}

/* y[i * ldy + (n - r0)] for i < m and n in [r0, r1) (act8/mod.rs). Returns 0, or 1 when the format
   has no kernel (nothing is written). */
QC_ATTR int QC_FN(qc_a8_matmul)(const qc_a8_format *f, const uint8_t *codes, const uint8_t *scales,
                                const int8_t *xq, const int32_t *xsum, int64_t ldq, int64_t lds,
                                int64_t m, float *y, int64_t ldy, int64_t k, int64_t r0, int64_t r1,
                                float post) {
  if (f->elem != 0 && f->elem != 1) return 1;
  if (r1 <= r0 || m <= 0) return 0;
  QC_VI tab = QC_BCAST16(f->table);
  if (f->elem == 1 && QC_OFFSET) tab = QC_XOR80(tab);
  if (m >= QC_A8_GEMM_MIN_ROWS && (f->group > 0 || ldq <= 65536)) {
    switch (f->elem * 1000 + (f->group > 0 ? f->group : 0)) {
    case 0: return QC_FN(qc_a8_gemm)(0, 0, f->group, f->store, tab, codes, scales, xq, xsum, ldq, lds, m, y, ldy, k, r0, r1, post);
    case 1000: return QC_FN(qc_a8_gemm)(1, 0, f->group, f->store, tab, codes, scales, xq, xsum, ldq, lds, m, y, ldy, k, r0, r1, post);
    QC_A8_GCASE(0, 16)
    QC_A8_GCASE(0, 32)
    QC_A8_GCASE(0, 64)
    QC_A8_GCASE(0, 128)
    QC_A8_GCASE(1, 16)
    QC_A8_GCASE(1, 32)
    QC_A8_GCASE(1, 64)
    QC_A8_GCASE(1, 128)
    default: return 1;
    }
  }
  /* GEMV: whole tiles of 4 activation rows, then the remaining rows one by one (the same order). */
  int64_t m4 = m / 4 * 4;
  for (int pass = 0; pass < 2; pass++) {
    int64_t mm = pass == 0 ? m4 : m - m4;
    if (mm == 0) continue;
    const int8_t *xqp = xq + (pass ? m4 * ldq : 0);
    const int32_t *xsp = xsum + (pass ? m4 * lds : 0);
    float *yp = y + (pass ? m4 * ldy : 0);
    int rc = pass == 0 ? QC_FN(qc_a8_gemv4)(f, tab, codes, scales, xqp, xsp, ldq, lds, mm, yp, ldy, k, r0, r1, post)
                       : QC_FN(qc_a8_gemv1)(f, tab, codes, scales, xqp, xsp, ldq, lds, mm, yp, ldy, k, r0, r1, post);
    if (rc) return rc;
  }
  return 0;
}

#undef QC_A8_CASE4
#undef QC_A8_CASE1
#undef QC_A8_REP
#undef QC_A8_GCASE
