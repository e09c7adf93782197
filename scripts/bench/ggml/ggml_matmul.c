// ggml_matmul: times ggml's CPU mul_mat on a quantized weight, a peer of qc's GEMV / GEMM
// benchmarks. Built by scripts/bench/ggml/build.sh (ggml from the llama-cpp-python sdist).
//
//   ggml_matmul --type q4_0|q8_0|mxfp4 --n N --k K --m M --threads T --reps R [--seed S]
//               [--repack 0|1]
//
// W is a ggml tensor of the given type with ne0 = K, ne1 = N (random normal f32 rows quantized with
// ggml_quantize_chunk, ggml's own quantizers), X is f32 with ne0 = K, ne1 = M, and the graph is
// Y = ggml_mul_mat(W, X) (Y f32, ne0 = N, ne1 = M: y[m][n] = sum_k W[n][k] X[m][k]). It is computed
// with ggml_graph_compute on a persistent ggml thread pool of T threads (as llama.cpp does), one
// warm-up then R timed runs, and prints one JSON line:
//
//   {"peer":"ggml","version":...,"type":...,"m":...,"n":...,"k":...,"threads":...,"best_s":...,
//    "median_s":...,"weight_bytes":...,"gbps":...,"gflops":...,"check":...,"layout":...}
//
// --repack 1 (the default) loads W as llama.cpp does by default: into ggml's CPU_REPACK buffer
// type when ggml has a repacked layout for the type on this CPU (on x86 with AVX2: q4_0 and mxfp4
// rearranged at load time into 8x8 interleaved blocks, N a multiple of 8, with their own GEMV /
// GEMM kernels; q8_0 has none on x86), else into the plain CPU buffer; --repack 0 always uses the
// plain buffer (ggml's generic vec_dot kernels and llamafile's sgemm). "layout" says which one ran:
// "repacked" or "plain".
//
// gbps = weight_bytes / best_s / 1e9 (weight_bytes: the bytes of W as ggml stores it, scales
// included: q4_0 18 bytes, q8_0 34 bytes and mxfp4 17 bytes per 32 weights); gflops = 2 M N K /
// best_s / 1e9. check = max |y - y_ref| / max |y_ref| over a few outputs (the first and last 4 rows
// of W, for the first and last column of X), y_ref computed in double precision from ggml's own
// dequantization of W (the type traits' to_float) and the f32 X.
//
// Note: ggml's mul_mat does not multiply by the f32 X directly. For all three types the CPU
// backend's vec_dot_type is Q8_0, so it first quantizes each column of X to q8_0 (int8, 32-element
// blocks, f16 scale) into the plan's work buffer, inside the timed compute, and then runs integer
// dot products; with M > 1 and q4_0 / q8_0, llamafile's sgemm (tinyBLAS) takes over the same q8_0
// X when the build enables it (the default) and the weights are in the plain layout. That
// on-the-fly quantization of X is why check is about 1e-3..1e-2 and not ~1e-6.
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

#ifndef QC_GGML_VERSION
#define QC_GGML_VERSION "unknown"
#endif

static void usage(const char *msg) {
    if (msg) fprintf(stderr, "ggml_matmul: %s\n", msg);
    fprintf(stderr,
            "usage: ggml_matmul --type q4_0|q8_0|mxfp4 --n N --k K --m M --threads T --reps R "
            "[--seed S] [--repack 0|1]\n");
    exit(2);
}

static long long parse_int(const char *name, const char *v) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || *end || x < 0) {
        fprintf(stderr, "ggml_matmul: bad value for %s: %s\n", name, v);
        exit(2);
    }
    return x;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Standard normal values: a table of 65536 Box-Muller draws, indexed by 16 random bits (four per
// 64-bit draw). Cheap enough to fill a 2^29-element matrix in about a second.
#define NTAB 65536
static float normal_tab[NTAB];

static void init_normal_tab(uint64_t seed) {
    uint64_t s = seed ^ 0x5eedull;
    for (int i = 0; i < NTAB; i += 2) {
        double u1 = ((double)(splitmix(&s) >> 11) + 1.0) / 9007199254740993.0; // (0, 1]
        double u2 = (double)(splitmix(&s) >> 11) / 9007199254740992.0;
        double r = sqrt(-2.0 * log(u1));
        normal_tab[i] = (float)(r * cos(6.283185307179586 * u2));
        normal_tab[i + 1] = (float)(r * sin(6.283185307179586 * u2));
    }
}

static void fill_normal(float *dst, int64_t count, uint64_t seed) {
    uint64_t s = seed;
    int64_t i = 0;
    while (i < count) {
        uint64_t r = splitmix(&s);
        for (int j = 0; j < 4 && i < count; j++, i++) {
            dst[i] = normal_tab[r & 0xffff];
            r >>= 16;
        }
    }
}

struct quant_job {
    enum ggml_type type;
    void *dst;
    int64_t row0, row1, k;
    uint64_t seed;
};

// Quantizes rows [row0, row1) of W, 64 rows at a time, each chunk seeded by its first row (the
// result does not depend on the number of threads).
static void *quant_rows(void *arg) {
    struct quant_job *j = arg;
    const int64_t chunk = 64;
    float *buf = malloc(sizeof(float) * (size_t)(chunk * j->k));
    if (!buf) {
        fprintf(stderr, "ggml_matmul: out of memory\n");
        exit(1);
    }
    for (int64_t r = j->row0; r < j->row1; r += chunk) {
        int64_t nr = r + chunk <= j->row1 ? chunk : j->row1 - r;
        fill_normal(buf, nr * j->k, j->seed * 0x100000001b3ull + (uint64_t)r);
        // ggml_quantize_chunk reads src + start: start 0 and the destination offset by hand.
        ggml_quantize_chunk(j->type, buf, (char *)j->dst + (size_t)r * ggml_row_size(j->type, j->k),
                            0, nr, j->k, NULL);
    }
    free(buf);
    return NULL;
}

// ggml's log, less its debug and info lines (the repack buffer logs each tensor it repacks).
static void log_quiet(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const char *type_name = NULL;
    long long n = -1, k = -1, m = -1, threads = -1, reps = -1, seed = 1, repack = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) usage(NULL);
        if (i + 1 >= argc) usage("missing value");
        const char *v = argv[++i];
        if (!strcmp(a, "--type")) type_name = v;
        else if (!strcmp(a, "--n")) n = parse_int(a, v);
        else if (!strcmp(a, "--k")) k = parse_int(a, v);
        else if (!strcmp(a, "--m")) m = parse_int(a, v);
        else if (!strcmp(a, "--threads")) threads = parse_int(a, v);
        else if (!strcmp(a, "--reps")) reps = parse_int(a, v);
        else if (!strcmp(a, "--seed")) seed = parse_int(a, v);
        else if (!strcmp(a, "--repack")) repack = parse_int(a, v);
        else usage("unknown option");
    }
    if (!type_name || n <= 0 || k <= 0 || m <= 0 || threads <= 0 || reps <= 0)
        usage("--type, --n, --k, --m, --threads and --reps are required (positive)");
    enum ggml_type type;
    if (!strcmp(type_name, "q4_0")) type = GGML_TYPE_Q4_0;
    else if (!strcmp(type_name, "q8_0")) type = GGML_TYPE_Q8_0;
    else if (!strcmp(type_name, "mxfp4")) type = GGML_TYPE_MXFP4;
    else usage("--type must be q4_0, q8_0 or mxfp4");
    if (k % ggml_blck_size(type) != 0) usage("--k must be a multiple of the block size (32)");

    ggml_log_set(log_quiet, NULL);
    ggml_cpu_init();
    init_normal_tab((uint64_t)seed);

    const size_t w_bytes = ggml_row_size(type, k) * (size_t)n;
    const size_t x_bytes = sizeof(float) * (size_t)k * (size_t)m;
    const size_t y_bytes = sizeof(float) * (size_t)n * (size_t)m;
    // W lives in a backend buffer (its own context, no_alloc); X, Y and the graph in a context
    // that allocates them.
    struct ggml_init_params wp = {
        .mem_size = 2 * ggml_tensor_overhead(), .mem_buffer = NULL, .no_alloc = true};
    struct ggml_context *ctx_w = ggml_init(wp);
    struct ggml_init_params ip = {
        .mem_size = x_bytes + y_bytes + 8 * ggml_tensor_overhead() + ggml_graph_overhead() +
                    (4u << 20),
        .mem_buffer = NULL,
        .no_alloc = false,
    };
    struct ggml_context *ctx = ggml_init(ip);
    if (!ctx || !ctx_w) {
        fprintf(stderr, "ggml_matmul: ggml_init(%zu bytes) failed\n", ip.mem_size);
        return 1;
    }
    struct ggml_tensor *w = ggml_new_tensor_2d(ctx_w, type, k, n);
    struct ggml_tensor *x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, k, m);

    // The buffer type for W: CPU_REPACK where it has a layout for this type and shape (it then
    // sets w->extra when the tensor is allocated), else the plain CPU buffer.
    ggml_backend_buffer_t w_buf = NULL;
    const char *layout = "plain";
    if (repack) {
        ggml_backend_reg_t reg = ggml_backend_cpu_reg();
        ggml_backend_dev_get_extra_bufts_t get_extra = (ggml_backend_dev_get_extra_bufts_t)
            ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
        ggml_backend_buffer_type_t *extra =
            get_extra ? get_extra(ggml_backend_reg_dev_get(reg, 0)) : NULL;
        for (; extra && *extra; extra++) {
            if (strcmp(ggml_backend_buft_name(*extra), "CPU_REPACK") != 0) continue;
            w_buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx_w, *extra);
            if (w_buf && w->extra == NULL) { // no repacked layout: give it back
                ggml_backend_buffer_free(w_buf);
                w_buf = NULL;
                w->buffer = NULL;
                w->data = NULL;
            }
            if (w_buf) layout = "repacked";
            break;
        }
    }
    if (!w_buf) w_buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx_w, ggml_backend_cpu_buffer_type());
    if (!w_buf) {
        fprintf(stderr, "ggml_matmul: allocating W (%zu bytes) failed\n", w_bytes);
        return 1;
    }
    ggml_backend_buffer_set_usage(w_buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);

    // W: random normal rows, quantized by ggml, in parallel, into a host copy (kept for the check),
    // then handed to the buffer (which repacks it when it is CPU_REPACK).
    void *w_host = malloc(w_bytes);
    if (!w_host) {
        fprintf(stderr, "ggml_matmul: out of memory (W %zu)\n", w_bytes);
        return 1;
    }
    {
        int nt = (int)threads;
        pthread_t tid[64];
        struct quant_job jobs[64];
        if (nt > 64) nt = 64;
        for (int t = 0; t < nt; t++) {
            jobs[t] = (struct quant_job){type, w_host, n * t / nt, n * (t + 1) / nt, k,
                                         (uint64_t)seed};
            pthread_create(&tid[t], NULL, quant_rows, &jobs[t]);
        }
        for (int t = 0; t < nt; t++) pthread_join(tid[t], NULL);
    }
    ggml_backend_tensor_set(w, w_host, 0, w_bytes);
    fill_normal((float *)x->data, k * m, (uint64_t)seed * 31 + 7);

    struct ggml_tensor *y = ggml_mul_mat(ctx, w, x);
    struct ggml_cgraph *gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, y);

    struct ggml_threadpool_params tpp = ggml_threadpool_params_default((int)threads);
    struct ggml_threadpool *tp = ggml_threadpool_new(&tpp);
    if (!tp) {
        fprintf(stderr, "ggml_matmul: ggml_threadpool_new failed\n");
        return 1;
    }
    struct ggml_cplan plan = ggml_graph_plan(gf, (int)threads, tp);
    uint8_t *work = NULL;
    if (plan.work_size > 0) {
        work = malloc(plan.work_size);
        if (!work) {
            fprintf(stderr, "ggml_matmul: out of memory (work %zu)\n", plan.work_size);
            return 1;
        }
        plan.work_data = work;
    }

    if (ggml_graph_compute(gf, &plan) != GGML_STATUS_SUCCESS) { // warm-up
        fprintf(stderr, "ggml_matmul: ggml_graph_compute failed\n");
        return 1;
    }
    double *t = malloc(sizeof(double) * (size_t)reps);
    for (long long r = 0; r < reps; r++) {
        double t0 = now_s();
        ggml_graph_compute(gf, &plan);
        t[r] = now_s() - t0;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_double);
    const double best = t[0], median = t[reps / 2];

    // Check: the first and last 4 rows of W against the first and last columns of X.
    const struct ggml_type_traits *tt = ggml_get_type_traits(type);
    float *wrow = malloc(sizeof(float) * (size_t)k);
    double max_err = 0.0, max_ref = 0.0;
    const float *yd = (const float *)y->data;
    const float *xd = (const float *)x->data;
    int64_t rows[8];
    int nrows = 0;
    for (int64_t r = 0; r < 4 && r < n; r++) rows[nrows++] = r;
    for (int64_t r = n - 4; r < n; r++)
        if (r >= 4) rows[nrows++] = r;
    int64_t cols[2] = {0, m - 1};
    for (int i = 0; i < nrows; i++) {
        const int64_t r = rows[i];
        tt->to_float((const char *)w_host + (size_t)r * ggml_row_size(type, k), wrow, k);
        for (int c = 0; c < (m > 1 ? 2 : 1); c++) {
            const int64_t col = cols[c];
            double ref = 0.0;
            for (int64_t j = 0; j < k; j++) ref += (double)wrow[j] * (double)xd[col * k + j];
            const double got = yd[col * n + r];
            if (fabs(got - ref) > max_err) max_err = fabs(got - ref);
            if (fabs(ref) > max_ref) max_ref = fabs(ref);
        }
    }
    const double check = max_err / (max_ref > 1e-30 ? max_ref : 1e-30);

    printf("{\"peer\": \"ggml\", \"version\": \"%s\", \"type\": \"%s\", \"m\": %lld, \"n\": %lld, "
           "\"k\": %lld, \"threads\": %lld, \"best_s\": %.9g, \"median_s\": %.9g, "
           "\"weight_bytes\": %zu, \"gbps\": %.6g, \"gflops\": %.6g, \"check\": %.6g, "
           "\"layout\": \"%s\"}\n",
           QC_GGML_VERSION, type_name, m, n, k, threads, best, median, w_bytes,
           (double)w_bytes / best / 1e9, 2.0 * (double)m * (double)n * (double)k / best / 1e9,
           check, layout);
    fflush(stdout);

    free(wrow);
    free(t);
    free(work);
    free(w_host);
    ggml_threadpool_free(tp);
    ggml_backend_buffer_free(w_buf);
    ggml_free(ctx);
    ggml_free(ctx_w);
    return 0;
}
