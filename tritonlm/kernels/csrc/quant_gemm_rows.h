// quant_gemm: activation quantization per row and block, and the output view.
// Included by quant_gemm.cpp inside its anonymous namespace (needs its Act/Out types, TW, MRMAX,
// constants and helpers); not a standalone header.
#pragma once

// ---- activations ---------------------------------------------------------------------------------

// One row's quantized activations: int8 values [K], and per block the scale, the integer sum of
// the values times -z (starts the accumulators of weights stored as q + z, unsigned), and the scale
// times that sum.
struct Act {
    const int8_t* q;   // [M, K]
    const float* s;    // [M, nb]
    const int32_t* c;  // [M, nb]: cmul * sum(q) (read for VB 8 on the VNNI path, VB 5 and 6 on the SIMD paths)
    const float* so;   // [M, nb]: s * sum(q) (only read for weights with offsets)
    int64_t K, nb;
    int32_t cmul;      // -z: -128 (VB 8, as stored on the VNNI path), -16 (VB 5), -32 (VB 6)
};

// A NaN input makes the block's scale NaN (so the row's outputs are NaN, as with float math); an
// infinite one makes it infinite. Non-finite products are quantized to -127 on every path.
inline void quant_block_values(const float* v, int bs, int8_t* q, float* scale, int32_t* sum) {
    float amax = 0.0f;
    bool nan = false;
    for (int i = 0; i < bs; i++) {
        amax = std::fmax(amax, std::fabs(v[i]));
        nan |= std::isnan(v[i]);
    }
    if (nan) amax = NAN;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    int32_t total = 0;
    for (int i = 0; i < bs; i++) {
        float r = v[i] * inv;
        r = r >= -127.0f ? (r <= 127.0f ? r : 127.0f) : -127.0f;  // NaN -> -127
        const int32_t qi = (int32_t)std::nearbyint(r);
        q[i] = (int8_t)qi;
        total += qi;
    }
    *scale = amax / 127.0f;
    *sum = total;
}

#if defined(QG_AVX512)
// 16 values at x (float32 or bfloat16) as a float32 vector
template <bool BF16>
inline __m512 load16(const void* x) {
    if (BF16) {
        __m256i h = _mm256_loadu_si256((const __m256i*)x);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_loadu_ps((const float*)x);
}

template <bool BF16>
void quant_row(const void* xrow, int64_t K, int bs, int32_t cmul, int8_t* q, float* s, int32_t* c, float* so) {
    const int64_t nb = K / bs;
    const int esz = BF16 ? 2 : 4;
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < nb; b++) {
        const char* p = (const char*)xrow + b * bs * esz;
        __m512 v0 = load16<BF16>(p);
        __m512 v1 = bs == 32 ? load16<BF16>(p + 16 * esz) : _mm512_setzero_ps();
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_and_ps(v0, absmask), _mm512_and_ps(v1, absmask)));
        if (_mm512_cmp_ps_mask(v0, v0, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(v1, v1, _CMP_UNORD_Q)) amax = NAN;
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        const __m512 vinv = _mm512_set1_ps(inv);
        __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, vinv));  // round half to even (MXCSR default)
        __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, vinv));
        const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
        q0 = _mm512_min_epi32(_mm512_max_epi32(q0, lo), hi);
        q1 = _mm512_min_epi32(_mm512_max_epi32(q1, lo), hi);
        _mm_storeu_si128((__m128i*)(q + b * bs), _mm512_cvtepi32_epi8(q0));
        if (bs == 32) _mm_storeu_si128((__m128i*)(q + b * bs + 16), _mm512_cvtepi32_epi8(q1));
        const int32_t total = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        const float scale = amax / 127.0f;
        s[b] = scale;
        c[b] = cmul * total;
        so[b] = scale * (float)total;
    }
}
#else
template <bool BF16>
void quant_row(const void* xrow, int64_t K, int bs, int32_t cmul, int8_t* q, float* s, int32_t* c, float* so) {
    const int64_t nb = K / bs;
    float tmp[32];
    for (int64_t b = 0; b < nb; b++) {
        for (int i = 0; i < bs; i++) {
            tmp[i] = BF16 ? bf16_to_f32(((const uint16_t*)xrow)[b * bs + i]) : ((const float*)xrow)[b * bs + i];
        }
        int32_t total;
        quant_block_values(tmp, bs, q + b * bs, &s[b], &total);
        c[b] = cmul * total;
        so[b] = s[b] * (float)total;
    }
}
#endif

// ---- output ----------------------------------------------------------------------------------

struct Out {
    void* y;          // [M, ldy] float32 or bfloat16
    int64_t ldy;      // row stride, elements
    int bf16;         // output dtype
    const void* bias;  // [N] float32 or bfloat16, or null
    int bias_bf16;
    int64_t N;
};

inline float bias_at(const Out& o, int64_t n) {
    return o.bias_bf16 ? bf16_to_f32(((const uint16_t*)o.bias)[n]) : ((const float*)o.bias)[n];
}
