// quant_gemm micro-kernels for AVX-512 VNNI (TW 16).
// Included by quant_gemm.cpp inside its anonymous namespace (needs its Act/Out types, TW, MRMAX,
// constants and helpers); not a standalone header.
#pragma once


// Bit d < 4 of each byte moved to bit 4 (the other bits: whatever, masked by the caller; the
// 16-bit shift carries bits into the next byte only below bit 4)
inline __m512i bit_to_4(__m512i v, int d) {
    switch (d) {
        case 0: return _mm512_slli_epi16(v, 4);
        case 1: return _mm512_slli_epi16(v, 3);
        case 2: return _mm512_slli_epi16(v, 2);
        default: return _mm512_slli_epi16(v, 1);
    }
}

// The block's values at p as the VNNI kernel multiplies them, one vector per activation word:
// q + 128 (VB 8), 0..15 (VB 4), u = q + 16 / q + 32 (VB 5 / 6)
template <int VB, int BS>
inline void load_block(const uint8_t* p, __m512i* w) {
    constexpr int ND = BS / 4;
    constexpr int HB = VB == 5 ? 1 : 0;  // a plane of bit 4
    if (VB == 8) {
        #pragma GCC unroll 16
        for (int d = 0; d < ND; d++) w[d] = _mm512_loadu_si512((const void*)(p + 64 * d));
        return;
    }
    if (VB == 6) {
        // per 4 words, 3 vectors x, y, z: words 4c .. 4c+2 in their low 6 bits, word 4c+3 in their
        // top 2 bits (bits 0-1 in x, 2-3 in y, 4-5 in z)
        const __m512i low6 = _mm512_set1_epi8(0x3f), low2 = _mm512_set1_epi8(0x03);
        const __m512i low4 = _mm512_set1_epi8(0x0f);
        #pragma GCC unroll 4
        for (int c = 0; c < ND / 4; c++) {
            const __m512i x = _mm512_loadu_si512((const void*)(p + 192 * c));
            const __m512i y = _mm512_loadu_si512((const void*)(p + 192 * c + 64));
            const __m512i z = _mm512_loadu_si512((const void*)(p + 192 * c + 128));
            w[4 * c] = _mm512_and_si512(x, low6);
            w[4 * c + 1] = _mm512_and_si512(y, low6);
            w[4 * c + 2] = _mm512_and_si512(z, low6);
            // (a & m) | (b & ~m): 0xe4. The 16-bit shifts' spill-over from the next byte lands in
            // bits the selection drops (or the final & 0x3f clears)
            const __m512i t = _mm512_ternarylogic_epi32(_mm512_srli_epi16(x, 6), _mm512_srli_epi16(y, 4), low2, 0xe4);
            const __m512i h = _mm512_ternarylogic_epi32(t, _mm512_srli_epi16(z, 2), low4, 0xe4);
            w[4 * c + 3] = _mm512_and_si512(h, low6);
        }
        return;
    }
    if (VB == 5 && BS == 32) {
        // 5 vectors: words 0-4 in their low 5 bits, words 5-7 in their top 3 bits (a 15-bit
        // stream: bits 5-7 of vector m are its bits 3m .. 3m+2)
        const __m512i low5 = _mm512_set1_epi8(0x1f);
        __m512i v[5];
        #pragma GCC unroll 5
        for (int m = 0; m < 5; m++) {
            v[m] = _mm512_loadu_si512((const void*)(p + 64 * m));
            w[m] = _mm512_and_si512(v[m], low5);
        }
        // (a & m) | (b & ~m): 0xe4; what the 16-bit shifts bring over from the next byte lands in
        // bits the selection drops or the final & 0x1f clears
        const __m512i t5 = _mm512_ternarylogic_epi32(_mm512_srli_epi16(v[0], 5), _mm512_srli_epi16(v[1], 2),
                                                     _mm512_set1_epi8(0x07), 0xe4);
        w[5] = _mm512_and_si512(t5, low5);
        const __m512i t6 = _mm512_ternarylogic_epi32(_mm512_srli_epi16(v[1], 7), _mm512_srli_epi16(v[2], 4),
                                                     _mm512_set1_epi8(0x01), 0xe4);
        w[6] = _mm512_and_si512(
            _mm512_ternarylogic_epi32(t6, _mm512_srli_epi16(v[3], 1), _mm512_set1_epi8(0x0f), 0xe4), low5);
        const __m512i t7 = _mm512_ternarylogic_epi32(_mm512_srli_epi16(v[3], 6), _mm512_srli_epi16(v[4], 3),
                                                     _mm512_set1_epi8(0x03), 0xe4);
        w[7] = _mm512_and_si512(t7, low5);
        return;
    }
    const __m512i nib = _mm512_set1_epi8(0x0f);
    #pragma GCC unroll 16
    for (int r = 0; r < ND / 2; r++) {
        __m512i v = _mm512_loadu_si512((const void*)(p + 64 * r));
        w[r] = _mm512_and_si512(v, nib);
        w[ND / 2 + r] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
    }
    const uint8_t* hp = p + TW * BS / 2;
    if (HB == 1) {  // BS 16
        // bit 4: bit d of each byte of the plane vector for word d, shifted to bit 4 (u | (b & 0x10))
        // 32 bytes: the low nibbles for the vector's lower half, the high ones for its upper half
        const __m512i counts = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
        const __m512i v = _mm512_srlv_epi16(_mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)hp)), counts);
        const __m512i bit4 = _mm512_set1_epi8(0x10);
        #pragma GCC unroll 16
        for (int d = 0; d < ND; d++) w[d] = _mm512_ternarylogic_epi32(w[d], bit_to_4(v, d), bit4, 0xf8);
    }
}

// A compact tile (VB 5 / 6, no offsets) rewritten in the VB-8 layout with float32 scales, the
// values kept as u (the accumulators start at -16 / -32 * sum(q_a) either way)
template <int VB, int BS>
void expand_tile(const uint8_t* tile, uint8_t* out, int64_t nb, bool half) {
    constexpr int ND = BS / 4;
    constexpr int64_t WB = TW * BS * VB / 8;
    const int64_t stride = WB + TW * (half ? 2 : 4);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* p = tile + b * stride;
        uint8_t* q = out + b * (TW * BS + TW * 4);
        __m512i w[ND];
        load_block<VB, BS>(p, w);
        #pragma GCC unroll 16
        for (int d = 0; d < ND; d++) _mm512_storeu_si512((void*)(q + 64 * d), w[d]);
        const __m512 sw = half ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(p + WB)))
                               : _mm512_loadu_ps((const float*)(p + WB));
        _mm512_storeu_ps((float*)(q + TW * BS), sw);
    }
}

// VB: stored value width (8, 4, 5, 6); HALF: float16 scales and offsets
template <int MR, int VB, bool OFF, bool HALF, int BS>
void tile_kernel(const uint8_t* tile, const uint8_t* pf, const Act& a, int64_t m0, int64_t n0, const Out& o) {
    constexpr int ND = BS / 4;  // 4-byte activation words per block
    constexpr int64_t WB = TW * BS * VB / 8;
    constexpr int64_t SB = TW * (HALF ? 2 : 4);
    constexpr int64_t STRIDE = WB + SB * (OFF ? 2 : 1);
    const int64_t nb = a.nb;
    __m512 acc[MR];
    #pragma GCC unroll 16
    for (int m = 0; m < MR; m++) acc[m] = _mm512_setzero_ps();
    const int8_t* qa = a.q + m0 * a.K;
    const float* sa = a.s + m0 * nb;
    const int32_t* ca = a.c + m0 * nb;
    const float* soa = a.so + m0 * nb;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* p = tile + b * STRIDE;
        if (pf) {
            // into L2, PREFETCH_BYTES ahead of this block (pf = tile + PREFETCH_BYTES)
            #pragma GCC unroll 16
            for (int64_t l = 0; l < STRIDE; l += 64) _mm_prefetch((const char*)(pf + b * STRIDE + l), _MM_HINT_T1);
        }
        __m512i w[ND];
        load_block<VB, BS>(p, w);
        __m512 sw, ow = _mm512_setzero_ps();
        if (HALF) {
            sw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(p + WB)));
            if (OFF) ow = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(p + WB + SB)));
        } else {
            sw = _mm512_loadu_ps((const float*)(p + WB));
            if (OFF) ow = _mm512_loadu_ps((const float*)(p + WB + SB));
        }
        #pragma GCC unroll 16
        for (int m = 0; m < MR; m++) {
            const int32_t* x4 = (const int32_t*)(qa + m * a.K + b * BS);
            // c = -(stored value - q) * sum(q_a): the stored values' offset taken back out
            __m512i i0 = VB == 4 ? _mm512_setzero_si512() : _mm512_set1_epi32(ca[m * nb + b]);
            __m512i i1 = _mm512_setzero_si512();
            #pragma GCC unroll 16
            for (int d = 0; d < ND; d += 2) {
                i0 = _mm512_dpbusd_epi32(i0, w[d], _mm512_set1_epi32(x4[d]));
                i1 = _mm512_dpbusd_epi32(i1, w[d + 1], _mm512_set1_epi32(x4[d + 1]));
            }
            const __m512 f = _mm512_cvtepi32_ps(_mm512_add_epi32(i0, i1));
            acc[m] = _mm512_fmadd_ps(f, _mm512_mul_ps(sw, _mm512_set1_ps(sa[m * nb + b])), acc[m]);
            if (OFF) acc[m] = _mm512_fmadd_ps(ow, _mm512_set1_ps(soa[m * nb + b]), acc[m]);
        }
    }
    const int64_t valid = o.N - n0 < TW ? o.N - n0 : TW;
    const __mmask16 mask = (__mmask16)((1u << valid) - 1u);
    __m512 bias = _mm512_setzero_ps();
    if (o.bias && o.bias_bf16) {
        __m256i h = _mm256_maskz_loadu_epi16(mask, (const uint16_t*)o.bias + n0);
        bias = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else if (o.bias) {
        bias = _mm512_maskz_loadu_ps(mask, (const float*)o.bias + n0);
    }
    #pragma GCC unroll 16
    for (int m = 0; m < MR; m++) {
        __m512 v = acc[m];
        if (o.bias) v = _mm512_add_ps(v, bias);
        if (o.bf16) {
            // round to nearest even on the bits; NaN -> quiet NaN
            __m512i u = _mm512_castps_si512(v);
            __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                                             _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
            __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x400000)));
            __m256i h = _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
            _mm256_mask_storeu_epi16((uint16_t*)o.y + (m0 + m) * o.ldy + n0, mask, h);
        } else {
            _mm512_mask_storeu_ps((float*)o.y + (m0 + m) * o.ldy + n0, mask, v);
        }
    }
}
