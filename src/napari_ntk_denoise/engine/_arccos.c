/* The fused output ops of the depth-2 kernel on a CPU, in C: the twins of kernel_ops._arccos_single,
 * _arccos_single_split, _arccos_pair and _split_bf16 (see there for the maths), including the small
 * float32 product of the Gram's principal part (written to memory and read back, it cost as much as
 * the op).  Blocks are row-major (n, w); rows are shared among `threads` OpenMP threads (torch's
 * count).  Built with -fopenmp the library needs libgomp.so.1, which a Linux torch has already
 * loaded: the dynamic loader then reuses torch's runtime and thread pool (a second pool would fight
 * torch's spinning threads for the cores).  Compiled on first use, with the host's vector
 * instructions, by napari_ntk_denoise._native. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PI_F 3.14159265358979323846f

/* comparisons rather than fmaxf/fminf: these vectorise without -ffinite-math-only */
static inline float max_f(float a, float b) { return a > b ? a : b; }
static inline float min_f(float a, float b) { return a < b ? a : b; }

/* bfloat16 <-> float32, rounding to nearest even like torch (finite values) */
static inline float load_bf16(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t store_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float load_f32(float f) { return f; }
static inline float store_f32(float f) { return f; }

/* acos by Abramowitz & Stegun 4.4.46: the coefficients of kernel_ops._ACOS */
static inline float acos_poly(float x) {
    float a = fabsf(x);
    float p = -0.0012624911f;
    p = p * a + 0.0066700901f;
    p = p * a - 0.0170881256f;
    p = p * a + 0.0308918810f;
    p = p * a - 0.0501743046f;
    p = p * a + 0.0889789874f;
    p = p * a - 0.2145988016f;
    p = p * a + 1.5707963050f;
    float r = sqrtf(max_f(1.0f - a, 0.0f)) * p;
    return x < 0.0f ? PI_F - r : r;
}

/* c |p||q| (sin t + factor (pi - t) cos t) from a raw Gram entry g; norm = |p||q|, c = sigma_w^2 / (2 pi) */
static inline float arccos_output(float g, float norm, float scale, float factor, float c) {
    float rho = min_f(max_f(g * scale / max_f(norm, 1e-30f), -1.0f), 1.0f);
    float val = sqrtf(max_f(1.0f - rho * rho, 0.0f)) + factor * (PI_F - acos_poly(rho)) * rho;
    return val * norm * c;
}

/* hi + lo = a in bfloat16 */
static inline void split(float a, uint16_t *hi, uint16_t *lo) {
    uint16_t h = store_bf16(a);
    *hi = h;
    *lo = store_bf16(a - load_bf16(h));
}

#define TILE_ROWS 4
#define TILE_COLS 32

/* Principal part of the Gram for rows (at most TILE_ROWS): h[r][j] = sum_k a[r][k] pt[k][j] (a: q per
 * row; pt: q rows of stride lpt).  Tiles of TILE_ROWS x TILE_COLS stay in registers, so each chunk
 * of pt is read once per tile rather than once per row (row by row, pt streamed from L2 cache
 * bounded the op).  Fused multiply-adds are fine here: each entry is computed once, used by both
 * K and K_eps. */
__attribute__((optimize("fp-contract=fast")))
static void principal_rows(float *restrict h, const float *restrict a, const float *restrict pt, int64_t lpt,
                           int64_t q, int64_t w, int64_t rows) {
    int64_t j0 = 0;
    if (rows == TILE_ROWS) {
        for (; j0 + TILE_COLS <= w; j0 += TILE_COLS) {
            float acc[TILE_ROWS][TILE_COLS] = {{0.0f}};
            for (int64_t k = 0; k < q; k++) {
                const float *restrict p = pt + k * lpt + j0;
                for (int r = 0; r < TILE_ROWS; r++) {
                    const float ak = a[r * q + k];
                    for (int jj = 0; jj < TILE_COLS; jj++)
                        acc[r][jj] += ak * p[jj];
                }
            }
            for (int r = 0; r < TILE_ROWS; r++)
                for (int jj = 0; jj < TILE_COLS; jj++)
                    h[r * w + j0 + jj] = acc[r][jj];
        }
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = j0; j < w; j++) {
            float sum = 0.0f;
            for (int64_t k = 0; k < q; k++)
                sum += a[r * q + k] * pt[k * lpt + j];
            h[r * w + j] = sum;
        }
}

/* Rows of an op in tiles shared among `threads` OpenMP threads, each with a principal-part buffer;
 * ROW is the op's row function called with (row index i, principal row hi).  Returns 1 if a buffer
 * could not be allocated (the output is then incomplete; nothing else can fail). */
#define FOR_ROWS(ROW)                                                                                  \
    int failed = 0;                                                                                    \
    _Pragma("omp parallel num_threads(threads)")                                                       \
    {                                                                                                  \
        float *buf = malloc(sizeof(float) * (size_t)(w > 0 ? w : 1) * TILE_ROWS);                      \
        if (!buf) {                                                                                    \
            _Pragma("omp atomic write")                                                                \
            failed = 1;                                                                                \
        }                                                                                              \
        /* every thread reaches the loop (a thread skipping it would hang the others) */              \
        _Pragma("omp for schedule(static)")                                                            \
        for (int64_t i0 = 0; i0 < n; i0 += TILE_ROWS) {                                                \
            if (!buf)                                                                                  \
                continue;                                                                              \
            int64_t rows = n - i0 < TILE_ROWS ? n - i0 : TILE_ROWS;                                    \
            principal_rows(buf, ar + i0 * q, pt, lpt, q, w, rows);                                     \
            for (int64_t i = i0; i < i0 + rows; i++) {                                                 \
                const float *hi = buf + (i - i0) * w;                                                  \
                ROW;                                                                                   \
            }                                                                                          \
        }                                                                                              \
        free(buf);                                                                                     \
    }                                                                                                  \
    return failed;

/* Gram = principal part (ar: n x q, pt: q x w of row stride lpt) + low (LOW_T); the inner loops are
 * functions of their own with restrict pointers, which is what lets them vectorise. */
#define PRINCIPAL const float *ar, int64_t q, const float *pt, int64_t lpt
#define DEFINE_OPS(SUF, LOW_T, LOAD, STORE)                                                                    \
static void single_row_##SUF(float *restrict o, const float *restrict h, const LOW_T *restrict l, float ni,    \
                             const float *restrict nc, int64_t w, float scale, float factor, float c) {       \
    for (int64_t j = 0; j < w; j++)                                                                           \
        o[j] = arccos_output(h[j] + LOAD(l[j]), ni * nc[j], scale, factor, c);                                \
}                                                                                                             \
int ntk_single_##SUF(int threads, int64_t n, int64_t w, float *out, PRINCIPAL, const LOW_T *low,              \
                     const float *nr, const float *nc, float scale, float factor, float c) {                  \
    FOR_ROWS(single_row_##SUF(out + i * w, hi, low + i * w, nr[i], nc, w, scale, factor, c))                  \
}                                                                                                             \
static void split_row_##SUF(uint16_t *restrict oh, uint16_t *restrict ol, const float *restrict h,            \
                            const LOW_T *restrict l, float ni, const float *restrict nc, int64_t w,           \
                            float scale, float factor, float c) {                                             \
    for (int64_t j = 0; j < w; j++)                                                                           \
        split(arccos_output(h[j] + LOAD(l[j]), ni * nc[j], scale, factor, c), oh + j, ol + j);                \
}                                                                                                             \
int ntk_single_split_##SUF(int threads, int64_t n, int64_t w, uint16_t *out_hi, uint16_t *out_lo, PRINCIPAL,  \
                           const LOW_T *low, const float *nr, const float *nc, float scale, float factor,     \
                           float c) {                                                                         \
    FOR_ROWS(split_row_##SUF(out_hi + i * w, out_lo + i * w, hi, low + i * w, nr[i], nc, w, scale, factor, c)) \
}                                                                                                             \
static inline float pair_entry_##SUF(float g, float delta, float norm, float norm_eps, LOW_T *od, float scale, \
                                     float factor, float c) {                                                 \
    float k = arccos_output(g, norm, scale, factor, c);                                                       \
    *od = STORE(arccos_output(g + delta, norm_eps, scale, factor, c) - k);                                    \
    return k;                                                                                                 \
}                                                                                                             \
static void pair_row_##SUF(float *restrict o, LOW_T *restrict od, const float *restrict h,                    \
                           const LOW_T *restrict l, const LOW_T *restrict d, const LOW_T *restrict dm,        \
                           int64_t wm, float ni, float nei, const float *restrict nc,                         \
                           const float *restrict nce, int64_t w, float scale, float factor, float c) {        \
    for (int64_t j = 0; j < wm; j++)                                                                          \
        o[j] = pair_entry_##SUF(h[j] + LOAD(l[j]), LOAD(d[j]) + LOAD(dm[j]), ni * nc[j], nei * nce[j], od + j, \
                                scale, factor, c);                                                            \
    for (int64_t j = wm; j < w; j++)                                                                          \
        o[j] = pair_entry_##SUF(h[j] + LOAD(l[j]), LOAD(d[j]), ni * nc[j], nei * nce[j], od + j, scale, factor, c); \
}                                                                                                             \
/* dG = dg plus dg_moved (n x wm) on the first wm columns */                                                  \
int ntk_pair_##SUF(int threads, int64_t n, int64_t w, float *out, LOW_T *out_delta, PRINCIPAL,                \
                   const LOW_T *low, const LOW_T *dg, const LOW_T *dg_moved, int64_t wm, const float *nr,     \
                   const float *nc, const float *nre, const float *nce, float scale, float factor, float c) { \
    FOR_ROWS(pair_row_##SUF(out + i * w, out_delta + i * w, hi, low + i * w, dg + i * w, dg_moved + i * wm, wm,   \
                            nr[i], nre[i], nc, nce, w, scale, factor, c))                                     \
}

DEFINE_OPS(bf16, uint16_t, load_bf16, store_bf16)
DEFINE_OPS(f32, float, load_f32, store_f32)

static void split_row(uint16_t *restrict oh, uint16_t *restrict ol, const float *restrict a, int64_t w) {
    for (int64_t j = 0; j < w; j++)
        split(a[j], oh + j, ol + j);
}

/* a (row stride lda) = hi + lo, both (n, w) bfloat16 */
void ntk_split(int threads, int64_t n, int64_t w, uint16_t *out_hi, uint16_t *out_lo, const float *a, int64_t lda) {
    _Pragma("omp parallel for schedule(static) num_threads(threads)")
    for (int64_t i = 0; i < n; i++)
        split_row(out_hi + i * w, out_lo + i * w, a + i * lda, w);
}
