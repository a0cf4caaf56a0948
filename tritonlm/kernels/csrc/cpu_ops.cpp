// The torch backend's small per-layer ops on the CPU (tritonlm/kernels/cpu_ops.py loads this with
// ctypes): rms_norm (+ the fused residual add), rotary embedding, the paged KV-cache store, paged
// decode attention and silu_and_mul. Each replaces a handful of tiny aten ops of
// tritonlm/kernels/reference.py, whose per-op overhead dominates at decode sizes.
//
// Numerics (dtypes: 0 = float32, 1 = bfloat16 everywhere below):
//
// * rms_norm, fused add, rotary, silu_and_mul, store: the same bits as the torch reference. Each
//   torch elementwise op on bfloat16 computes in float32 and rounds once to bfloat16 (round to
//   nearest even), so every op of the reference is one rounding here too, in the same order; no
//   fused multiply-add is used where torch has none (the build passes -ffp-contract=off).
//   - rms_norm's sum of squares follows torch's CPU sum kernel (aten/src/ATen/native/cpu/
//     SumKernel.cpp: vectorized_inner_sum -> row_sum -> multi_row_sum with 4 ILP accumulators and
//     its cascade levels) for a float vector of VW lanes: torch's Vectorized<float>::size() in the
//     ISA build of the kernel torch dispatches to (8 with torch 2.13 on AVX2 and on AVX-512 CPUs,
//     where REGISTER_DISPATCH leaves the AVX-512 slot to the AVX2 build), which the caller
//     measures and passes; mean = sum / H (a true division), rsqrt = 1 / sqrt.
//   - silu uses torch's exp: Sleef_expf*_u10 (replicated below, FMA steps included) on the elements
//     torch's vectorized loop covers, libm's expf on those its scalar tail covers. Which element
//     falls where depends on torch's loop structure (per row: chunks of 2 vectors, then a scalar
//     tail; the vector width is measured by the caller: 16 floats with torch 2.13 on AVX-512) and
//     on how at::parallel_for splits the flat element range over torch's threads, which
//     co_silu_and_mul replays from the thread count passed in.
// * paged decode attention: float32 math in a fixed order per (sequence, kv head): the result of a
//   sequence is the same bits whatever the batch, the other sequences or the thread count. Its dot
//   products and weighted sums use explicit fused multiply-adds (std::fma semantics: vfmadd where
//   the target has FMA, the same bits from libm elsewhere), its exp the Sleef replica below.
//
// ABI: every integer parameter is an int64_t (the Python side passes them as pointer-sized words).
//
// Threads: OpenMP (the library links torch's libgomp, so one pool), only where the work is large
// enough to pay for a parallel region; small calls run on the calling thread.

#include <omp.h>

#if defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "bf16.h"

#define CO_ABI_VERSION 1

namespace {

// ---- scalar helpers (bfloat16 conversions: bf16.h) --------------------------------------------------

template <bool BF16>
inline float ld(const void* p, int64_t i) {
    if constexpr (BF16) return bf16_to_f32(((const uint16_t*)p)[i]);
    else return ((const float*)p)[i];
}

template <bool BF16>
inline void st(void* p, int64_t i, float v) {
    if constexpr (BF16) ((uint16_t*)p)[i] = f32_to_bf16(v);
    else ((float*)p)[i] = v;
}

// the value a torch op of this dtype stores for the float32 result v
template <bool BF16>
inline float rnd(float v) {
    if constexpr (BF16) return round_bf16(v);
    else return v;
}

inline int64_t divup(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::vector<float>& scratch(int which, size_t n) {
    static thread_local std::vector<float> bufs[3];
    std::vector<float>& b = bufs[which];
    if (b.size() < n) b.resize(n);
    return b;
}

// ---- exp -----------------------------------------------------------------------------------------
// Sleef's expf u10 (sleefsimdsp.c xexpf, as built for AVX2 / AVX-512, where vmla is an FMA): the
// vector exp of torch's Vectorized<float>::exp(). Inputs are clamped to [-104, 100] before the
// reduction (outside it the result is replaced anyway: 0 below, inf above; a NaN input returns a
// finite value, which its callers never let through: silu of NaN divides NaN).
constexpr float kRLn2 = 1.442695040888963407359924681001892137426645954152985934135449406931f;
constexpr float kL2U = 0.693145751953125f;
constexpr float kL2L = 1.428606765330187045e-06f;

inline float pow2i(int32_t q) {
    const uint32_t u = (uint32_t)(q + 0x7f) << 23;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline float sleef_expf(float d) {
    float dc = d >= -104.0f ? d : -104.0f;  // also maps NaN to -104
    dc = dc <= 100.0f ? dc : 100.0f;
    // rint(dc / ln2): |dc * R| < 2^22, where adding and removing 1.5 * 2^23 rounds to nearest even
    const float t = dc * kRLn2;
    const float qf = (t + 12582912.0f) - 12582912.0f;
    const int32_t q = (int32_t)qf;
    float s = std::fma(qf, -kL2U, dc);
    s = std::fma(qf, -kL2L, s);
    float u = 0.000198527617612853646278381f;
    u = std::fma(u, s, 0.00139304355252534151077271f);
    u = std::fma(u, s, 0.00833336077630519866943359f);
    u = std::fma(u, s, 0.0416664853692054748535156f);
    u = std::fma(u, s, 0.166666671633720397949219f);
    u = std::fma(u, s, 0.5f);
    u = 1.0f + std::fma(s * s, u, s);
    const int32_t h = q >> 1;
    u = (u * pow2i(h)) * pow2i(q - h);
    u = d < -104.0f ? 0.0f : u;
    u = 100.0f < d ? INFINITY : u;
    return u;
}

// ---- rms_norm ------------------------------------------------------------------------------------
inline int64_t ceil_log2(int64_t x) {  // at::native::utils::CeilLog2
    if (x <= 2) return 1;
    return 64 - __builtin_clzll((uint64_t)(x - 1));
}

// torch's sum of a contiguous float32 row of n >= VW values (cascade_sum -> vectorized_inner_sum)
template <int VW>
float torch_row_sum(const float* x, int64_t n) {
    const int64_t nvec = n / VW;
    const int64_t size = nvec / 4;  // row_sum: (size, 4) vectors for multi_row_sum
    float acc[4][4][VW];
    std::memset(acc, 0, sizeof(acc));
    const int64_t level_power = std::max<int64_t>(4, ceil_log2(size) / 4);
    const int64_t level_step = int64_t(1) << level_power;
    const int64_t level_mask = level_step - 1;
    int64_t i = 0;
    for (; i + level_step <= size;) {
        for (int64_t j = 0; j < level_step; ++j, ++i) {
            const float* base = x + i * 4 * VW;
            for (int k = 0; k < 4; ++k)
                for (int l = 0; l < VW; ++l) acc[0][k][l] += base[k * VW + l];
        }
        for (int j = 1; j < 4; ++j) {
            for (int k = 0; k < 4; ++k)
                for (int l = 0; l < VW; ++l) {
                    acc[j][k][l] += acc[j - 1][k][l];
                    acc[j - 1][k][l] = 0.0f;
                }
            if ((i & (level_mask << (j * level_power))) != 0) break;
        }
    }
    for (; i < size; ++i) {
        const float* base = x + i * 4 * VW;
        for (int k = 0; k < 4; ++k)
            for (int l = 0; l < VW; ++l) acc[0][k][l] += base[k * VW + l];
    }
    for (int j = 1; j < 4; ++j)
        for (int k = 0; k < 4; ++k)
            for (int l = 0; l < VW; ++l) acc[0][k][l] += acc[j][k][l];
    // row_sum: the vectors past size * 4 go to partial 0, then partials 1..3 are added to it
    for (int64_t v = size * 4; v < nvec; ++v)
        for (int l = 0; l < VW; ++l) acc[0][0][l] += x[v * VW + l];
    for (int k = 1; k < 4; ++k)
        for (int l = 0; l < VW; ++l) acc[0][0][l] += acc[0][k][l];
    // vectorized_inner_sum: the scalar tail first, then the lanes in order
    float total = 0.0f;
    for (int64_t v = nvec * VW; v < n; ++v) total += x[v];
    for (int l = 0; l < VW; ++l) total += acc[0][0][l];
    return total;
}

struct RmsArgs {
    const void* x;
    int64_t ldx;
    const void* res;  // or null
    int64_t ldr;
    void* sum;  // [rows, lds] the summed rows (when res), x's dtype
    int64_t lds;
    const void* w;
    void* y;
    int64_t ldy;
    int64_t H;
    float eps;
};

template <int VW, bool XB, bool WB>
void rms_rows(const RmsArgs& a, int64_t m0, int64_t m1) {
    constexpr bool OB = XB && WB;  // the output dtype: torch's promotion of weight and x
    const int64_t H = a.H;
    float* s = scratch(0, H).data();
    float* sq = scratch(1, H).data();
    for (int64_t m = m0; m < m1; ++m) {
        const char* xr = (const char*)a.x + m * a.ldx * (XB ? 2 : 4);
        if (a.res) {
            const char* rr = (const char*)a.res + m * a.ldr * (XB ? 2 : 4);
            char* sr = (char*)a.sum + m * a.lds * (XB ? 2 : 4);
            for (int64_t i = 0; i < H; ++i) {
                const float v = rnd<XB>(ld<XB>(xr, i) + ld<XB>(rr, i));
                s[i] = v;
                st<XB>(sr, i, v);
            }
        } else {
            for (int64_t i = 0; i < H; ++i) s[i] = ld<XB>(xr, i);
        }
        for (int64_t i = 0; i < H; ++i) sq[i] = s[i] * s[i];
        const float var = torch_row_sum<VW>(sq, H) / (float)H;
        const float r = 1.0f / std::sqrt(var + a.eps);
        char* yr = (char*)a.y + m * a.ldy * (OB ? 2 : 4);
        for (int64_t i = 0; i < H; ++i) {
            const float n = rnd<XB>(s[i] * r);
            st<OB>(yr, i, ld<WB>(a.w, i) * n);
        }
    }
}

template <int VW, bool XB, bool WB>
void rms_run(const RmsArgs& a, int64_t rows, int nthreads) {
    // about 0.5 us a row of 896 on one core: threads only for batches of a few dozen rows
    if (nthreads > 1 && rows >= 2 && rows * a.H >= 32768) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
        for (int64_t m = 0; m < rows; ++m) rms_rows<VW, XB, WB>(a, m, m + 1);
    } else {
        rms_rows<VW, XB, WB>(a, 0, rows);
    }
}

template <int VW>
void rms_dispatch(const RmsArgs& a, int64_t rows, int xb, int wb, int nthreads) {
    if (xb && wb) rms_run<VW, true, true>(a, rows, nthreads);
    else if (xb) rms_run<VW, true, false>(a, rows, nthreads);
    else if (wb) rms_run<VW, false, true>(a, rows, nthreads);
    else rms_run<VW, false, false>(a, rows, nthreads);
}

// ---- silu_and_mul --------------------------------------------------------------------------------
// One run of a row, as torch's vectorized_loop does it: chunks of `step` elements through the
// vector exp, the rest through libm's expf.
template <bool BF16>
void silu_segment(const void* xr, int64_t I, void* yr, int64_t c0, int64_t c1, int64_t step, float* e) {
    const int64_t n = c1 - c0;
    const int64_t nv = (n / step) * step;
    for (int64_t i = 0; i < nv; ++i) e[i] = sleef_expf(-ld<BF16>(xr, c0 + i));
    for (int64_t i = nv; i < n; ++i) e[i] = std::exp(-ld<BF16>(xr, c0 + i));
    for (int64_t i = 0; i < n; ++i) {
        const float x = ld<BF16>(xr, c0 + i);
        const float silu = rnd<BF16>(x / (1.0f + e[i]));
        st<BF16>(yr, c0 + i, silu * ld<BF16>(xr, I + c0 + i));
    }
}

template <bool BF16>
void silu_rows(const void* x, int64_t ldx, void* y, int64_t I, int64_t m0, int64_t m1, int64_t chunk, int64_t step) {
    constexpr int esz = BF16 ? 2 : 4;
    float* e = scratch(0, I).data();
    for (int64_t m = m0; m < m1; ++m) {
        const char* xr = (const char*)x + m * ldx * esz;
        char* yr = (char*)y + m * I * esz;
        // torch's thread ranges cut the flat [rows * I] range at multiples of `chunk`
        int64_t c = 0;
        while (c < I) {
            const int64_t flat = m * I + c;
            const int64_t next_cut = (flat / chunk + 1) * chunk;
            const int64_t c1 = std::min(I, next_cut - m * I);
            silu_segment<BF16>(xr, I, yr, c, c1, step, e);
            c = c1;
        }
    }
}

// ---- rotary embedding ----------------------------------------------------------------------------
struct RopeTensor {
    void* p;
    int64_t sT, sH, H;
    int64_t bf16;
};

template <bool BF16>
void rope_heads(const RopeTensor& x, int64_t t, int64_t half, const float* c, const float* s) {
    constexpr int esz = BF16 ? 2 : 4;
    for (int64_t h = 0; h < x.H; ++h) {
        char* row = (char*)x.p + (t * x.sT + h * x.sH) * esz;
        void* hi = row + half * esz;
        for (int64_t i = 0; i < half; ++i) {
            const float x1 = ld<BF16>(row, i), x2 = ld<BF16>(hi, i);
            const float a = rnd<BF16>(x1 * c[i]), b = rnd<BF16>(x2 * s[i]);
            const float a2 = rnd<BF16>(x2 * c[i]), b2 = rnd<BF16>(x1 * s[i]);
            st<BF16>(row, i, a - b);
            st<BF16>(hi, i, a2 + b2);
        }
    }
}

#include "cpu_ops_attention.h"


}  // namespace

extern "C" {

int co_abi_version() { return CO_ABI_VERSION; }


// rms_norm of rows [rows, H] (row strides in elements); with res: the fused add first, the sums
// written to sum_out (x's dtype). x, res: dtype xb; w: [H] dtype wb; y: dtype xb && wb.
// vw: torch's float vector width (8 or 16). Returns 0, or -1 on bad arguments.
int co_rms_norm(const void* x, int64_t ldx, const void* res, int64_t ldr, void* sum_out, int64_t lds,
                const void* w, void* y, int64_t ldy, int64_t rows, int64_t H, float eps, int64_t xb, int64_t wb, int64_t vw,
                int64_t nthreads) {
    if (rows < 0 || H < vw || (vw != 8 && vw != 16) || !x || !w || !y || (res && !sum_out)) return -1;
    const RmsArgs a{x, ldx, res, ldr, sum_out, lds, w, y, ldy, H, eps};
    if (vw == 16) rms_dispatch<16>(a, rows, xb, wb, nthreads);
    else rms_dispatch<8>(a, rows, xb, wb, nthreads);
    return 0;
}

// y [rows, I] (contiguous) = silu(x[:, :I]) * x[:, I:] for x [rows, 2I] with row stride ldx, dtype
// bf16 for both. step: elements per chunk of torch's vectorized loop (2 * Vectorized<T>::size());
// torch_threads: torch.get_num_threads() (how torch's silu would split the rows * I elements).
int co_silu_and_mul(const void* x, int64_t ldx, void* y, int64_t rows, int64_t I, int64_t bf16, int64_t step,
                    int64_t torch_threads, int64_t nthreads) {
    if (rows < 0 || I < 0 || step <= 0 || !x || !y) return -1;
    const int64_t numel = rows * I;
    if (numel == 0) return 0;
    int64_t chunk = numel;  // TensorIterator::for_each -> at::parallel_for(0, numel, 32768)
    const int64_t grain = 32768;
    if (numel > grain && torch_threads > 1) chunk = divup(numel, std::min<int64_t>(torch_threads, divup(numel, grain)));
    auto run = [&](int64_t m0, int64_t m1) {
        if (bf16) silu_rows<true>(x, ldx, y, I, m0, m1, chunk, step);
        else silu_rows<false>(x, ldx, y, I, m0, m1, chunk, step);
    };
    if (nthreads > 1 && rows >= 2 && numel > 32768) {  // ~7 rows of 4864: ~25 us on one core
#pragma omp parallel for num_threads(nthreads) schedule(static)
        for (int64_t m = 0; m < rows; ++m) run(m, m + 1);
    } else {
        run(0, rows);
    }
    return 0;
}

// In-place rotate-half RoPE on q [T, Hq, D] and k [T, Hk, D] (strides in elements, the last dim
// contiguous). cache: [cache_rows, ldc] float32, cos in columns [0, D/2), sin in [D/2, D).
// Returns 0, -1 on bad arguments, -2 when a position is out of range (nothing written).
int co_rotary(void* q, int64_t q_sT, int64_t q_sH, int64_t Hq, int64_t qb, void* k, int64_t k_sT, int64_t k_sH,
              int64_t Hk, int64_t kb, int64_t T, int64_t D, const int64_t* positions, const float* cache,
              int64_t cache_rows, int64_t ldc) {
    if (T < 0 || D < 2 || D % 2 || !positions || !cache) return -1;
    for (int64_t t = 0; t < T; ++t)
        if (positions[t] < 0 || positions[t] >= cache_rows) return -2;
    const int64_t half = D / 2;
    float* cs = scratch(0, D).data();
    const RopeTensor xs[2] = {{q, q_sT, q_sH, Hq, qb}, {k, k_sT, k_sH, Hk, kb}};
    for (int64_t t = 0; t < T; ++t) {
        const float* row = cache + positions[t] * ldc;
        for (const RopeTensor& x : xs) {
            if (x.H == 0) continue;
            // cos / sin cast to the activations' dtype
            if (x.bf16) {
                for (int64_t i = 0; i < D; ++i) cs[i] = round_bf16(row[i]);
                rope_heads<true>(x, t, half, cs, cs + half);
            } else {
                rope_heads<false>(x, t, half, row, row + half);
            }
        }
    }
    return 0;
}

// k_cache / v_cache [nslots, Hk, D] (contiguous, dtype cb) [slot] = k / v [t] (strides in elements,
// dtype kb, cast like Tensor.to) for every t with slots[t] >= 0. Returns 0, -1 on bad arguments, -2
// when a slot is out of range (nothing written).
int co_store_kv(const void* k, int64_t k_sT, int64_t k_sH, const void* v, int64_t v_sT, int64_t v_sH, int64_t kb,
                void* kc, void* vc, int64_t cb, int64_t nslots, int64_t T, int64_t Hk, int64_t D, const void* slots,
                int64_t slots64) {
    if (T < 0 || Hk < 0 || D < 0 || !slots) return -1;
    for (int64_t t = 0; t < T; ++t)
        if (idx_at(slots, slots64, t) >= nslots) return -2;
    const int sesz = kb ? 2 : 4, desz = cb ? 2 : 4;
    for (int64_t t = 0; t < T; ++t) {
        const int64_t slot = idx_at(slots, slots64, t);
        if (slot < 0) continue;
        for (int which = 0; which < 2; ++which) {
            const char* src = (const char*)(which ? v : k) + (which ? v_sT : k_sT) * t * sesz;
            const int64_t sH = which ? v_sH : k_sH;
            char* dst = (char*)(which ? vc : kc) + slot * Hk * D * desz;
            if (kb == cb && sH == D) {
                std::memcpy(dst, src, (size_t)(Hk * D * desz));
                continue;
            }
            for (int64_t h = 0; h < Hk; ++h) {
                const char* s = src + h * sH * sesz;
                char* d = dst + h * D * desz;
                if (kb == cb) {
                    std::memcpy(d, s, (size_t)(D * desz));
                } else if (cb) {
                    for (int64_t i = 0; i < D; ++i) st<true>(d, i, ld<false>(s, i));
                } else {
                    for (int64_t i = 0; i < D; ++i) st<false>(d, i, ld<true>(s, i));
                }
            }
        }
    }
    return 0;
}

// Paged decode attention: out [B, Hq, D] (contiguous, q's dtype) of q [B, Hq, D] (strides q_sB,
// q_sH, the last dim contiguous) over caches [N, S, Hk, D] (contiguous, dtype cb), block_tables
// [>= B, bt_ld] (int32 or int64), context_lens [B]. Returns 0, -1 on bad arguments (D not one of
// 32, 64, 80, 96, 128, 256; Hq not a multiple of Hk), -2 when a context length or a block index is
// out of range (nothing written).
int co_decode_attention(const void* q, int64_t q_sB, int64_t q_sH, int64_t qb, const void* kc, const void* vc, int64_t cb,
                        int64_t N, int64_t S, int64_t Hk, int64_t D, int64_t B, int64_t Hq, const void* block_tables,
                        int64_t bt64, int64_t bt_ld, int64_t max_blocks, const void* context_lens, int64_t cl64, float scale,
                        void* out, int64_t nthreads) {
    if (B < 0 || Hk <= 0 || Hq <= 0 || Hq % Hk || S <= 0 || !q || !kc || !vc || !out) return -1;
    const attend_fn fn = attend_for(D, qb, cb);
    if (!fn) return -1;
    int64_t work = 0;
    for (int64_t b = 0; b < B; ++b) {
        const int64_t L = idx_at(context_lens, cl64, b);
        if (L < 1 || L > max_blocks * S) return -2;
        for (int64_t j = 0; j < divup(L, S); ++j) {
            const int64_t blk = idx_at(block_tables, bt64, b * bt_ld + j);
            if (blk < 0 || blk >= N) return -2;
        }
        work += L;
    }
    const AttnArgs a{q, q_sB, q_sH, kc, vc, S, Hk, D, Hq, block_tables, bt64, bt_ld, context_lens, cl64, scale, out};
    const int64_t items = B * Hk;
    // keys x query heads x D multiply-adds (twice). Measured on a Zen 4 core pair (bf16, 14 / 2 heads
    // of 64): 100 keys 7.0 us on one thread, 6.4 on two; 200 keys 13.2 / 7.3; 1000 keys 84 / 45. So
    // threads from ~146 keys of 14 x 64 (~12 us of work): below that a parallel region (and, on a
    // loaded machine, waiting for a descheduled worker) costs about what it saves.
    if (nthreads > 1 && items > 1 && work * Hq * D >= 131072) {
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
        for (int64_t i = 0; i < items; ++i) fn(a, i / Hk, i % Hk);
    } else {
        for (int64_t i = 0; i < items; ++i) fn(a, i / Hk, i % Hk);
    }
    return 0;
}

}  // extern "C"
