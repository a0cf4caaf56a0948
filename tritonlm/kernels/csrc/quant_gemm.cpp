// Weight-only quantized linear for the CPU: y[M, N] = x[M, K] @ w[N, K]^T (+ bias).
//
// Plain C ABI (loaded with ctypes by tritonlm/kernels/cpu_quant.py), no torch headers.
//
// Weights (tritonlm/kernels/qweight.py): w[n, k] = q[n, k] * s[n, k / G] + o[n, k / G], q int8
// (bits 8) or 0..15 (bits 4), s and o float32. The activations are quantized here, per row and per
// block of BS = min(G, 32) inputs, to int8 in -127..127 with a float32 scale a_s = amax / 127
// (q_a = round-half-even(x * (127 / amax))), so that for every block b of a row
//
//     sum_k x[k] w[n, k] ~= a_s[b] * (s[n, b] * sum_k q_a[k] q[n, k] + o[n, b] * sum_k q_a[k])
//
// with exact integer dot products (VNNI vpdpbusd where the compiler targets it), then a float32
// scale-and-sum over the blocks in a fixed order (b = 0, 1, ...) with the same instruction
// sequence for every row: a row's result does not depend on M or on the other rows.
//
// Packed layout (qg_pack), private to this library: rows are grouped in tiles of TW rows (padded
// with zero rows); each tile stores its K / BS blocks one after the other, each block being
//   weights  TW * BS * VB / 8 bytes, VB = the stored value width (below)
//   scales   TW float32, or TW float16 when every scale of the matrix is exactly a float16 (the
//            group scale of each row, repeated when G > BS)
//   offsets  TW float32 / float16 as the scales (only when the weight has offsets)
// Value widths VB: 8 (int8), 4 (bits-4 weights, 0..15), and the compact forms of int8 weights
// whose values all fit fewer bits, losslessly, and that have no offsets: 5 (-16..15, the GGUF Q5_0
// range) and 6 (-32..31, Q6_K), stored as u = q + 16 / q + 32 (0..31 / 0..63).
// Weights of a block are "dword interleaved": 32-bit word d of lane j holds inputs 4d .. 4d+3 of
// row j, so one broadcast 4-byte activation word feeds all TW rows at once; byte i = 4j + e of
// word d's vector is row j, input 4d + e. VB 8: word d at byte offset d * TW * 4 (stored as
// q + 128 = unsigned on the AVX-512 VNNI path, as vpdpbusd multiplies unsigned by signed bytes;
// the -128 * sum(q_a) correction starts the accumulator). VB 4 (and VB 5 with BS 16): word r of
// lane j (r < BS / 8) holds inputs 4r .. 4r+3 in its low nibbles and inputs BS/2 + 4r ..
// BS/2 + 4r + 3 in its high nibbles (u's low 4 bits for VB 5); VB 5 then stores bit 4 of u in a
// plane of TW * BS / 8 bytes: bit d of plane byte i, bit d + 4 of plane byte i - TW * 2 when
// i >= TW * 2, is bit 4 of u at byte i of word d's vector. The other compact layouts store a few
// words' bytes in the low bits of whole vectors (TW * 4 bytes each) and the rest of the words in
// their top bits. VB 5 with BS 32: 5 vectors, the 8 words' u at byte i being the low 5 bits of
// byte i of vectors 0-4 (words 0-4) and the 15-bit number made of bits 5-7 of those bytes
// (vector m's at bits 3m .. 3m+2): words 5, 6, 7 at its bits 0-4, 5-9, 10-14. VB 6: per 4 words
// 4c .. 4c+3, 3 vectors (at 3c * TW * 4): the low 6 bits of their byte i hold words 4c .. 4c+2,
// their top 2 bits word 4c+3 (bits 0-1, 2-3, 4-5). Unpacking takes 1 vector operation for a word
// in low bits, 4 to 6 for one in top bits: 2.4 a word for VB 5 (BS 32), 2.25 for VB 6.
// The kernel rebuilds u and starts the accumulator at -16 (-32) * sum(q_a): the integer dot
// products, hence the results, are the same bits as from the int8 layout of the same values.

// ISA: chosen at compile time from the -march macros: AVX-512 VNNI (TW 16), AVX2 + FMA + F16C
// (TW 8, vpmaddubsw), or portable scalar code (TW 8). All three give the same bits.
//
// Schedule (qg_linear): the rows are quantized first (by the calling thread when few, else by all
// threads); then the threads take work items, (a few tiles, a chunk of rows) sized so that both
// stay in L2, dynamically (a thread slowed by other load on the machine holds back only its current
// item). Within an item each tile is swept once per MRMAX rows by a micro-kernel that keeps every
// loaded weight vector for MRMAX rows (MR x TW accumulators), and (from 2 rows on) prefetches into
// L2 the bytes PREFETCH_BYTES ahead as it goes. 5-bit tiles swept by many rows are expanded once
// into the VB-8 layout and swept from there (EXPAND_MIN_ROWS). The result rows never
// depend on the partition: one row's floats are computed by the same instructions in the same
// order whatever M, MR, the layout or the thread.

#include <omp.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "bf16.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define QG_AVX512 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define QG_AVX2 1
#include <immintrin.h>
#endif

namespace {

#if defined(QG_AVX512)
constexpr int TW = 16;
constexpr int MRMAX = 8;
constexpr bool UNSIGNED_Q8 = true;
constexpr const char* ISA = "avx512_vnni";
#elif defined(QG_AVX2)
constexpr int TW = 8;
constexpr int MRMAX = 4;
constexpr bool UNSIGNED_Q8 = false;
constexpr const char* ISA = "avx2";
#else
constexpr int TW = 8;
constexpr int MRMAX = 4;
constexpr bool UNSIGNED_Q8 = false;
constexpr const char* ISA = "scalar";
#endif

constexpr int ABI_VERSION = 3;
// Software prefetch distance (M >= 2): measured best among 1-64 KiB at 2 to 64 rows on Zen 4 (the
// hardware prefetchers alone overlap memory and compute poorly once a block carries a few rows
// of work; a whole tile ahead is too far for the down projection's 87 KiB tiles). One row streams
// best on the hardware prefetchers alone.
constexpr int64_t PREFETCH_BYTES = 8 << 10;
// 5-bit tiles swept by at least this many rows of a work item are first expanded into the VB-8
// layout in a per-thread buffer, then swept from there: unpacking inline costs ~4% of a sweep's
// compute; expanded once per tile and thread (the buffer keeps the thread's last block of tiles,
// for its next row chunk), from ~10 sweeps on less (measured on Zen 4). 6-bit tiles unpack inline
// at ~1% and are never expanded.
constexpr int64_t EXPAND_MIN_ROWS = 10 * MRMAX + 1;

inline int block_size(int group) { return group < 32 ? group : 32; }

// bytes of one block's values, of one block's scales (or offsets), of one block
inline int64_t weight_bytes(int vbits, int bs) { return (int64_t)TW * bs * vbits / 8; }

inline int64_t scale_bytes(int half) { return (int64_t)TW * (half ? 2 : 4); }

inline int64_t block_stride(int vbits, int bs, int has_off, int half) {
    return weight_bytes(vbits, bs) + scale_bytes(half) * (has_off ? 2 : 1);
}

// float16 bits -> float32, exactly (subnormals, infinities and NaN included)
inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0) {
        const float f = std::ldexp((float)man, -24);
        return sign ? -f : f;
    }
    const uint32_t u = sign | (exp == 31 ? 0x7f800000u | (man << 13) : ((exp + 112) << 23) | (man << 13));
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

#include "quant_gemm_rows.h"

// ---- micro-kernels: MR rows x one tile of TW output columns, the whole K -----------------------

#if defined(QG_AVX512)
#include "quant_gemm_avx512.h"
#elif defined(QG_AVX2)
#include "quant_gemm_avx2.h"
#else
#include "quant_gemm_scalar.h"
#endif

void quant_rows(const void* x, int x_bf16, int64_t ldx, int64_t m0, int64_t m1, int64_t K, int bs, const Act& a) {
    const int esz = x_bf16 ? 2 : 4;
    for (int64_t m = m0; m < m1; m++) {
        const void* row = (const char*)x + m * ldx * esz;
        int8_t* q = const_cast<int8_t*>(a.q) + m * K;
        float* s = const_cast<float*>(a.s) + m * a.nb;
        int32_t* c = const_cast<int32_t*>(a.c) + m * a.nb;
        float* so = const_cast<float*>(a.so) + m * a.nb;
        if (x_bf16) quant_row<true>(row, K, bs, a.cmul, q, s, c, so);
        else quant_row<false>(row, K, bs, a.cmul, q, s, c, so);
    }
}

using KernelFn = void (*)(const uint8_t*, const uint8_t*, const Act&, int64_t, int64_t, const Out&);

template <int VB, bool OFF, bool HALF, int BS, int MR>
void fill_table(KernelFn* table) {
    table[MR] = &tile_kernel<MR, VB, OFF, HALF, BS>;
    if constexpr (MR > 1) fill_table<VB, OFF, HALF, BS, MR - 1>(table);
}

template <int VB, bool OFF, bool HALF, int BS>
const KernelFn* kernel_table() {
    static KernelFn table[MRMAX + 1] = {nullptr};
    static bool filled = (fill_table<VB, OFF, HALF, BS, MRMAX>(table), true);
    (void)filled;
    return table;
}

// The layouts with kernels: 5- and 6-bit values without offsets only (GGUF Q5_0, Q6_K), float16
// scales with blocks of 32 only (groups >= 32: Q8_0, Q5_0, Q4_0); kernels for every combination
// would take half as long again to build.
inline bool valid_layout(int vbits, int has_off, int half, int bs) {
    const bool values = vbits == 4 || vbits == 8 || ((vbits == 5 || vbits == 6) && !has_off);
    return values && (bs == 16 || bs == 32) && (!half || bs == 32);
}

template <int VB, bool OFF>
const KernelFn* kernels_for(int half, int bs) {
    if (bs == 16) return kernel_table<VB, OFF, false, 16>();
    return half ? kernel_table<VB, OFF, true, 32>() : kernel_table<VB, OFF, false, 32>();
}

// (a valid layout)
const KernelFn* select_kernels(int vbits, int has_off, int half, int bs) {
    switch (vbits) {
        case 4: return has_off ? kernels_for<4, true>(half, bs) : kernels_for<4, false>(half, bs);
        case 5: return kernels_for<5, false>(half, bs);
        case 6: return kernels_for<6, false>(half, bs);
        default: return has_off ? kernels_for<8, true>(half, bs) : kernels_for<8, false>(half, bs);
    }
}

using ExpandFn = void (*)(const uint8_t*, uint8_t*, int64_t, bool);

ExpandFn select_expand(int vbits, int bs) {
    if (vbits == 5) return bs == 32 ? &expand_tile<5, 32> : &expand_tile<5, 16>;
    return nullptr;
}

inline void* aligned_buffer(size_t bytes) {
    size_t rounded = (bytes + 63) / 64 * 64;
    return std::aligned_alloc(64, rounded ? rounded : 64);
}

}  // namespace

extern "C" {

int qg_abi_version() { return ABI_VERSION; }

const char* qg_isa() { return ISA; }

int qg_tile_rows() { return TW; }

int qg_max_threads() { return omp_get_max_threads(); }

// Ask for transparent huge pages on the 2 MiB-aligned interior of [ptr, ptr + bytes), before it is
// first written: a packed matrix is streamed once per call, and 4 KiB pages cost a TLB miss per
// page. Returns 0, or -1 where unsupported (harmless).
int qg_advise_hugepages(void* ptr, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)2 << 20;
    const uintptr_t lo = ((uintptr_t)ptr + huge - 1) & ~(huge - 1);
    const uintptr_t hi = ((uintptr_t)ptr + (uintptr_t)bytes) & ~(huge - 1);
    if (hi <= lo) return 0;
    return madvise((void*)lo, hi - lo, MADV_HUGEPAGE);
#else
    (void)ptr, (void)bytes;
    return -1;
#endif
}

// vbits: the stored value width (4 for bits-4 weights; 8, or 5 / 6 when every value fits, for
// bits-8 weights); half: scales and offsets stored as float16. qg_has_layout: 1 when the library
// has kernels for the layout (qg_pack and qg_linear reject the others).
int qg_has_layout(int vbits, int group, int has_off, int half) {
    return group >= 16 && !(group & (group - 1)) && valid_layout(vbits, has_off, half, block_size(group));
}

int64_t qg_packed_bytes(int64_t N, int64_t K, int vbits, int group, int has_off, int half) {
    const int bs = block_size(group);
    const int64_t tiles = (N + TW - 1) / TW;
    return tiles * (K / bs) * block_stride(vbits, bs, has_off, half);
}

// q: int8 [N, K] (bits 8) or uint8 [N, K / 2] (bits 4); scales, offsets (or null): [N, K / group],
// float16 when half (the caller checked that they are exact) else float32. Returns 0, -1 on bad
// arguments, -3 when a value does not fit vbits (5: -16..15, 6: -32..31).
int qg_pack(const void* q, int bits, const void* scales, const void* offsets, int64_t N, int64_t K, int group,
            int vbits, int half, uint8_t* out, int nthreads) {
    if ((bits != 4 && bits != 8) || group < 16 || (group & (group - 1)) || K % group || N < 0) return -1;
    const int bs = block_size(group);
    if (!valid_layout(vbits, offsets != nullptr, half, bs) || (bits == 4) != (vbits == 4)) return -1;
    const int64_t nb = K / bs, ng = K / group;
    const int has_off = offsets != nullptr;
    const int64_t stride = block_stride(vbits, bs, has_off, half);
    const int64_t wb = weight_bytes(vbits, bs), sb = scale_bytes(half);
    const int bias = vbits == 5 ? 16 : vbits == 6 ? 32 : 0;  // u = q + bias for the compact widths
    const int64_t tiles = (N + TW - 1) / TW;
    int bad = 0;
#pragma omp parallel for num_threads(nthreads > 0 ? nthreads : 1) schedule(static) reduction(| : bad)
    for (int64_t t = 0; t < tiles; t++) {
        for (int64_t b = 0; b < nb; b++) {
            uint8_t* p = out + (t * nb + b) * stride;
            std::memset(p, 0, (size_t)stride);
            for (int j = 0; j < TW; j++) {
                const int64_t n = t * TW + j;
                const bool real = n < N;
                const int64_t g = b * bs / group;
                if (half) {
                    ((uint16_t*)(p + wb))[j] = real ? ((const uint16_t*)scales)[n * ng + g] : 0;
                    if (has_off) ((uint16_t*)(p + wb + sb))[j] = real ? ((const uint16_t*)offsets)[n * ng + g] : 0;
                } else {
                    ((float*)(p + wb))[j] = real ? ((const float*)scales)[n * ng + g] : 0.0f;
                    if (has_off) ((float*)(p + wb + sb))[j] = real ? ((const float*)offsets)[n * ng + g] : 0.0f;
                }
                for (int k = 0; k < bs; k++) {
                    const int64_t kk = b * bs + k;
                    if (vbits == 8) {
                        const int8_t v = real ? ((const int8_t*)q)[n * K + kk] : 0;
                        const uint8_t stored = UNSIGNED_Q8 ? (uint8_t)(v + 128) : (uint8_t)v;
                        p[(k / 4) * TW * 4 + j * 4 + k % 4] = stored;
                        continue;
                    }
                    int u = 0;  // the value as stored, 0..15 / 0..31 / 0..63
                    if (vbits == 4) {
                        if (real) {
                            const uint8_t byte = ((const uint8_t*)q)[n * (K / 2) + kk / 2];
                            u = (kk & 1) ? (byte >> 4) : (byte & 0x0f);
                        }
                    } else {
                        u = (real ? ((const int8_t*)q)[n * K + kk] : 0) + bias;
                        if (u < 0 || u >= 2 * bias) {
                            bad = 1;
                            u = 0;
                        }
                    }
                    const int d = k / 4, i = j * 4 + k % 4;  // word, byte of its vector
                    if (vbits == 6) {
                        const int c = d / 4, e = d % 4;
                        uint8_t* x = p + 3 * c * TW * 4 + i;  // x, y, z at x[0], x[TW * 4], x[2 * TW * 4]
                        if (e < 3) {
                            x[e * TW * 4] |= (uint8_t)u;
                        } else {
                            for (int m = 0; m < 3; m++) x[m * TW * 4] |= (uint8_t)(((u >> (2 * m)) & 3) << 6);
                        }
                        continue;
                    }
                    if (vbits == 5 && bs == 32) {
                        if (d < 5) {
                            p[d * TW * 4 + i] |= (uint8_t)u;
                        } else {
                            for (int bit = 0; bit < 5; bit++) {  // the 15-bit stream in bits 5-7
                                const int at = 5 * (d - 5) + bit;
                                p[(at / 3) * TW * 4 + i] |= (uint8_t)(((u >> bit) & 1) << (5 + at % 3));
                            }
                        }
                        continue;
                    }
                    const int half_bs = bs / 2;
                    const int k2 = k < half_bs ? k : k - half_bs;
                    p[(k2 / 4) * TW * 4 + j * 4 + k2 % 4] |= (uint8_t)(k < half_bs ? (u & 0x0f) : (u & 0x0f) << 4);
                    if (vbits == 5) {
                        const int pb = TW * bs / 8;  // the plane's bytes
                        p[TW * bs / 2 + i % pb] |= (uint8_t)(((u >> 4) & 1) << (d + (bs / 4) * (i / pb)));
                    }
                }
            }
        }
    }
    return bad ? -3 : 0;
}

// y[M, N] (row stride ldy) = x[M, K] (row stride ldx) @ w^T + bias, w packed by qg_pack with
// (vbits, group, has_off, half). x_bf16 / bias_bf16 / y_bf16: 1 for bfloat16, 0 for float32.
// bias: [N] or null. Returns 0, -1 on bad arguments, -2 when out of memory.
int qg_linear(const void* x, int x_bf16, int64_t ldx, int64_t M, int64_t K, const uint8_t* packed, int64_t N,
              int vbits, int group, int has_off, int half, const void* bias, int bias_bf16, void* y, int y_bf16,
              int64_t ldy, int nthreads) {
    if (group < 16 || (group & (group - 1)) || K <= 0 || K % group || M < 0 || N < 0) return -1;
    const int bs = block_size(group);
    if (!valid_layout(vbits, has_off, half, bs)) return -1;
    if (M == 0 || N == 0) return 0;
    const int64_t nb = K / bs;
    int8_t* qa = (int8_t*)aligned_buffer((size_t)(M * K));
    float* sa = (float*)aligned_buffer((size_t)(M * nb) * 4);
    int32_t* ca = (int32_t*)aligned_buffer((size_t)(M * nb) * 4);
    float* soa = (float*)aligned_buffer((size_t)(M * nb) * 4);
    if (!qa || !sa || !ca || !soa) {
        std::free(qa), std::free(sa), std::free(ca), std::free(soa);
        return -2;
    }
    const int32_t cmul = vbits == 5 ? -16 : vbits == 6 ? -32 : -128;
    const Act act{qa, sa, ca, soa, K, nb, cmul};
    const Out out{y, ldy, y_bf16, bias, bias_bf16, N};
    const KernelFn* kernels = select_kernels(vbits, has_off, half, bs);
    const int64_t stride = block_stride(vbits, bs, has_off, half);
    const int64_t tile_bytes = nb * stride;
    // compact tiles swept by many rows: expanded once per thread (EXPAND_MIN_ROWS)
    const ExpandFn expand = select_expand(vbits, bs);
    const KernelFn* kernels8 = expand ? select_kernels(8, 0, 0, bs) : nullptr;
    const int64_t tile_bytes8 = nb * block_stride(8, bs, 0, 0);
    const int64_t tiles = (N + TW - 1) / TW;
    // cache blocking for many rows: a few tiles' weights (<= ~192 KiB) stay in L2 while
    // chunks of rows (<= ~256 KiB of int8 activations) stream past them
    const int64_t tiles_per_block = tile_bytes >= (192 << 10) ? 1 : (192 << 10) / tile_bytes;
    int64_t rows_per_chunk = ((256 << 10) / K) / MRMAX * MRMAX;
    if (rows_per_chunk < MRMAX) rows_per_chunk = MRMAX;
    const int64_t tile_blocks = (tiles + tiles_per_block - 1) / tiles_per_block;
    const int64_t row_chunks = (M + rows_per_chunk - 1) / rows_per_chunk;
    const int64_t items = tile_blocks * row_chunks;
    int nt = nthreads > 0 ? nthreads : 1;
    if (items < nt) nt = (int)items;
    // few rows: quantize them here, before the threads start (no barrier to wait at)
    const bool serial_quant = M * K <= (64 << 10) || nt == 1;
    if (serial_quant) quant_rows(x, x_bf16, ldx, 0, M, K, bs, act);
    // work items: (block of tiles, chunk of rows), tile-block major, handed out dynamically so
    // that a thread delayed by other load on the machine holds back only its current item
#pragma omp parallel num_threads(nt)
    {
        uint8_t* scratch = nullptr;  // this thread's expanded block of tiles, allocated at first use
        bool allocated = false;
        int64_t expanded = -1;  // the first tile of the block the scratch holds
        if (!serial_quant) {
#pragma omp for schedule(static)
            for (int64_t m = 0; m < M; m++) quant_rows(x, x_bf16, ldx, m, m + 1, K, bs, act);
        }
#pragma omp for schedule(dynamic, 1) nowait
        for (int64_t item = 0; item < items; item++) {
            const int64_t tb = (item / row_chunks) * tiles_per_block;
            const int64_t tb1 = tb + tiles_per_block < tiles ? tb + tiles_per_block : tiles;
            const int64_t mc = (item % row_chunks) * rows_per_chunk;
            const int64_t mc1 = mc + rows_per_chunk < M ? mc + rows_per_chunk : M;
            if (expand && mc1 - mc >= EXPAND_MIN_ROWS && !allocated) {
                scratch = (uint8_t*)aligned_buffer((size_t)(tiles_per_block * tile_bytes8));  // null: inline
                allocated = true;
            }
            const bool cached = expanded == tb;
            const bool use_scratch = scratch && (cached || mc1 - mc >= EXPAND_MIN_ROWS);
            for (int64_t t = tb; t < tb1; t++) {
                const uint8_t* tile = packed + t * tile_bytes;
                if (use_scratch) {
                    // the same integer sums and float operations as unpacking inline: same bits.
                    // After a tile's expansion its first sweep prefetches the next tile
                    uint8_t* tile8 = scratch + (t - tb) * tile_bytes8;
                    if (!cached) expand(tile, tile8, nb, half != 0);
                    const bool next = !cached && (tiles - t - 1) * tile_bytes >= tile_bytes8;
                    for (int64_t m0 = mc; m0 < mc1; m0 += MRMAX) {
                        const int64_t mr = mc1 - m0 < MRMAX ? mc1 - m0 : MRMAX;
                        const uint8_t* pf = next && m0 == mc ? tile + tile_bytes : nullptr;
                        kernels8[mr](tile8, pf, act, m0, t * TW, out);
                    }
                    if (t + 1 == tb1) expanded = tb;
                    continue;
                }
                // software prefetch a fixed distance ahead (not past the matrix) from 2 rows on:
                // the hardware prefetchers alone leave memory and compute poorly overlapped once a
                // block carries a few rows of work, but stream one row best by themselves
                const bool prefetch = M > 1 && (tiles - t - 1) * tile_bytes >= PREFETCH_BYTES;
                const uint8_t* pf = prefetch ? tile + PREFETCH_BYTES : nullptr;
                for (int64_t m0 = mc; m0 < mc1; m0 += MRMAX) {
                    const int64_t mr = mc1 - m0 < MRMAX ? mc1 - m0 : MRMAX;
                    kernels[mr](tile, pf, act, m0, t * TW, out);
                }
            }
        }
        std::free(scratch);
    }
    std::free(qa), std::free(sa), std::free(ca), std::free(soa);
    return 0;
}

}  // extern "C"
