// quant_gemm micro-kernels for AVX2 + FMA + F16C (TW 8, vpmaddubsw).
// Included by quant_gemm.cpp inside its anonymous namespace (needs its Act/Out types, TW, MRMAX,
// constants and helpers); not a standalone header.
#pragma once


// Bit d < 4 of each byte moved to bit 4 (the other bits: whatever, masked by the caller; the
// 16-bit shift carries bits into the next byte only below bit 4)
inline __m256i bit_to_4(__m256i v, int d) {
    switch (d) {
        case 0: return _mm256_slli_epi16(v, 4);
        case 1: return _mm256_slli_epi16(v, 3);
        case 2: return _mm256_slli_epi16(v, 2);
        default: return _mm256_slli_epi16(v, 1);
    }
}

// A compact block's values (VB 5 / 6) at p as u = q + 16 / q + 32, one vector per activation word
template <int VB, int BS>
inline void load_compact(const uint8_t* p, __m256i* u) {
    constexpr int ND = BS / 4;
    if (VB == 6) {
        // per 4 words, 3 vectors x, y, z: words 4c .. 4c+2 in their low 6 bits, word 4c+3 in their
        // top 2 bits (bits 0-1 in x, 2-3 in y, 4-5 in z)
        const __m256i low6 = _mm256_set1_epi8(0x3f);
        #pragma GCC unroll 4
        for (int c = 0; c < ND / 4; c++) {
            const __m256i x = _mm256_loadu_si256((const __m256i*)(p + 96 * c));
            const __m256i y = _mm256_loadu_si256((const __m256i*)(p + 96 * c + 32));
            const __m256i z = _mm256_loadu_si256((const __m256i*)(p + 96 * c + 64));
            u[4 * c] = _mm256_and_si256(x, low6);
            u[4 * c + 1] = _mm256_and_si256(y, low6);
            u[4 * c + 2] = _mm256_and_si256(z, low6);
            const __m256i h01 = _mm256_and_si256(_mm256_srli_epi16(x, 6), _mm256_set1_epi8(0x03));
            const __m256i h23 = _mm256_and_si256(_mm256_srli_epi16(y, 4), _mm256_set1_epi8(0x0c));
            const __m256i h45 = _mm256_and_si256(_mm256_srli_epi16(z, 2), _mm256_set1_epi8(0x30));
            u[4 * c + 3] = _mm256_or_si256(_mm256_or_si256(h01, h23), h45);
        }
        return;
    }
    if (BS == 32) {
        // 5 vectors: words 0-4 in their low 5 bits, words 5-7 in their top 3 bits (a 15-bit stream)
        const __m256i low5 = _mm256_set1_epi8(0x1f);
        __m256i v[5];
        #pragma GCC unroll 5
        for (int m = 0; m < 5; m++) {
            v[m] = _mm256_loadu_si256((const __m256i*)(p + 32 * m));
            u[m] = _mm256_and_si256(v[m], low5);
        }
        auto bits = [](__m256i a, int mask) { return _mm256_and_si256(a, _mm256_set1_epi8((char)mask)); };
        u[5] = _mm256_or_si256(bits(_mm256_srli_epi16(v[0], 5), 0x07), bits(_mm256_srli_epi16(v[1], 2), 0x18));
        u[6] = _mm256_or_si256(bits(_mm256_srli_epi16(v[1], 7), 0x01), bits(_mm256_srli_epi16(v[2], 4), 0x0e));
        u[6] = _mm256_or_si256(u[6], bits(_mm256_srli_epi16(v[3], 1), 0x10));
        u[7] = _mm256_or_si256(bits(_mm256_srli_epi16(v[3], 6), 0x03), bits(_mm256_srli_epi16(v[4], 3), 0x1c));
        return;
    }
    const __m256i nib = _mm256_set1_epi8(0x0f);
    #pragma GCC unroll 16
    for (int r = 0; r < ND / 2; r++) {
        __m256i v = _mm256_loadu_si256((const __m256i*)(p + 32 * r));
        u[r] = _mm256_and_si256(v, nib);
        u[ND / 2 + r] = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
    }
    const uint8_t* hp = p + TW * BS / 2;
    {
        // BS 16: 16 bytes, the low nibbles for the vector's lower half, the high ones for its upper half
        const __m256i counts = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
        const __m256i v = _mm256_srlv_epi32(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)hp)), counts);
        const __m256i bit4 = _mm256_set1_epi8(0x10);
        #pragma GCC unroll 16
        for (int d = 0; d < ND; d++) u[d] = _mm256_or_si256(u[d], _mm256_and_si256(bit_to_4(v, d), bit4));
    }
}

// A compact tile (VB 5 / 6, no offsets) rewritten in the VB-8 layout (signed int8 on this path)
// with float32 scales
template <int VB, int BS>
void expand_tile(const uint8_t* tile, uint8_t* out, int64_t nb, bool half) {
    constexpr int ND = BS / 4;
    constexpr int64_t WB = TW * BS * VB / 8;
    const int64_t stride = WB + TW * (half ? 2 : 4);
    const __m256i bias = _mm256_set1_epi8((char)(VB == 5 ? 16 : 32));
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* p = tile + b * stride;
        uint8_t* q = out + b * (TW * BS + TW * 4);
        __m256i u[ND];
        load_compact<VB, BS>(p, u);
        #pragma GCC unroll 16
        for (int d = 0; d < ND; d++) _mm256_storeu_si256((__m256i*)(q + 32 * d), _mm256_sub_epi8(u[d], bias));
        const __m256 sw = half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p + WB)))
                               : _mm256_loadu_ps((const float*)(p + WB));
        _mm256_storeu_ps((float*)(q + TW * BS), sw);
    }
}

template <int MR, int VB, bool OFF, bool HALF, int BS>
void tile_kernel(const uint8_t* tile, const uint8_t* pf, const Act& a, int64_t m0, int64_t n0, const Out& o) {
    constexpr int ND = BS / 4;
    constexpr int HB = VB == 5 ? 1 : VB == 6 ? 2 : 0;
    constexpr int64_t WB = TW * BS * VB / 8;
    constexpr int64_t SB = TW * (HALF ? 2 : 4);
    constexpr int64_t STRIDE = WB + SB * (OFF ? 2 : 1);
    const int64_t nb = a.nb;
    __m256 acc[MR];
    #pragma GCC unroll 16
    for (int m = 0; m < MR; m++) acc[m] = _mm256_setzero_ps();
    const int8_t* qa = a.q + m0 * a.K;
    const float* sa = a.s + m0 * nb;
    const int32_t* ca = a.c + m0 * nb;
    const float* soa = a.so + m0 * nb;
    const __m256i ones16 = _mm256_set1_epi16(1);
    const __m256i nib = _mm256_set1_epi8(0x0f);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* p = tile + b * STRIDE;
        if (pf) {
            // into L2, PREFETCH_BYTES ahead of this block (pf = tile + PREFETCH_BYTES)
            #pragma GCC unroll 16
            for (int64_t l = 0; l < STRIDE; l += 64) _mm_prefetch((const char*)(pf + b * STRIDE + l), _MM_HINT_T1);
        }
        __m256i isum[MR];
        if (HB) {
            // u = q + 16 (32) in 0..31 (63), unsigned; pairs <= 2 * 63 * 127 fit int16
            __m256i u[ND];
            load_compact<HB ? VB : 5, BS>(p, u);
            #pragma GCC unroll 16
            for (int m = 0; m < MR; m++) isum[m] = _mm256_set1_epi32(ca[m * nb + b]);  // -16 (32) sum(q_a)
            #pragma GCC unroll 16
            for (int d = 0; d < ND; d++) {
                #pragma GCC unroll 16
                for (int m = 0; m < MR; m++) {
                    const int32_t* x4 = (const int32_t*)(qa + m * a.K + b * BS);
                    __m256i pr = _mm256_maddubs_epi16(u[d], _mm256_set1_epi32(x4[d]));
                    isum[m] = _mm256_add_epi32(isum[m], _mm256_madd_epi16(pr, ones16));
                }
            }
        } else if (VB == 4) {
            // products of 0..15 by -127..127, pairs summed: |.| <= 3810, 8 of them fit in int16
            __m256i s16[MR];
            #pragma GCC unroll 16
            for (int m = 0; m < MR; m++) s16[m] = _mm256_setzero_si256();
            #pragma GCC unroll 16
            for (int r = 0; r < ND / 2; r++) {
                __m256i v = _mm256_loadu_si256((const __m256i*)(p + 32 * r));
                __m256i wl = _mm256_and_si256(v, nib);
                __m256i wh = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
                #pragma GCC unroll 16
                for (int m = 0; m < MR; m++) {
                    const int32_t* x4 = (const int32_t*)(qa + m * a.K + b * BS);
                    s16[m] = _mm256_add_epi16(s16[m], _mm256_maddubs_epi16(wl, _mm256_set1_epi32(x4[r])));
                    s16[m] = _mm256_add_epi16(s16[m], _mm256_maddubs_epi16(wh, _mm256_set1_epi32(x4[ND / 2 + r])));
                }
            }
            #pragma GCC unroll 16
            for (int m = 0; m < MR; m++) isum[m] = _mm256_madd_epi16(s16[m], ones16);
        } else {
            // signed weights: |w| (unsigned) times x with w's sign; pairs <= 128 * 127 * 2 fit int16
            #pragma GCC unroll 16
            for (int m = 0; m < MR; m++) isum[m] = _mm256_setzero_si256();
            #pragma GCC unroll 16
            for (int d = 0; d < ND; d++) {
                __m256i w = _mm256_loadu_si256((const __m256i*)(p + 32 * d));
                __m256i aw = _mm256_abs_epi8(w);
                #pragma GCC unroll 16
                for (int m = 0; m < MR; m++) {
                    const int32_t* x4 = (const int32_t*)(qa + m * a.K + b * BS);
                    __m256i xs = _mm256_sign_epi8(_mm256_set1_epi32(x4[d]), w);
                    isum[m] = _mm256_add_epi32(isum[m], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xs), ones16));
                }
            }
        }
        __m256 sw, ow = _mm256_setzero_ps();
        if (HALF) {
            sw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p + WB)));
            if (OFF) ow = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p + WB + SB)));
        } else {
            sw = _mm256_loadu_ps((const float*)(p + WB));
            if (OFF) ow = _mm256_loadu_ps((const float*)(p + WB + SB));
        }
        #pragma GCC unroll 16
        for (int m = 0; m < MR; m++) {
            const __m256 f = _mm256_cvtepi32_ps(isum[m]);
            acc[m] = _mm256_fmadd_ps(f, _mm256_mul_ps(sw, _mm256_set1_ps(sa[m * nb + b])), acc[m]);
            if (OFF) acc[m] = _mm256_fmadd_ps(ow, _mm256_set1_ps(soa[m * nb + b]), acc[m]);
        }
    }
    const int64_t valid = o.N - n0 < TW ? o.N - n0 : TW;
    #pragma GCC unroll 16
    for (int m = 0; m < MR; m++) {
        alignas(32) float v[TW];
        _mm256_store_ps(v, acc[m]);
        for (int64_t j = 0; j < valid; j++) {
            float r = o.bias ? v[j] + bias_at(o, n0 + j) : v[j];
            if (o.bf16) ((uint16_t*)o.y)[(m0 + m) * o.ldy + n0 + j] = f32_to_bf16_keep_nan(r);
            else ((float*)o.y)[(m0 + m) * o.ldy + n0 + j] = r;
        }
    }
}
