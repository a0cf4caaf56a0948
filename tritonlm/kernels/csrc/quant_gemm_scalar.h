// quant_gemm micro-kernels in portable scalar code (TW 8).
// Included by quant_gemm.cpp inside its anonymous namespace (needs its Act/Out types, TW, MRMAX,
// constants and helpers); not a standalone header.
#pragma once


// The value of row j, input k of the block at p (signed q; 0..15 for VB 4)
template <int VB, int BS>
inline int32_t value_at(const uint8_t* p, int j, int k) {
    constexpr int HB = VB == 5 ? 1 : 0;  // (BS 16) a plane of bit 4
    if (VB == 8) return (int8_t)p[(k / 4) * TW * 4 + j * 4 + k % 4];
    if (VB == 6) {
        const int d = k / 4, c = d / 4, e = d % 4, i = j * 4 + k % 4;
        const uint8_t* x = p + 3 * c * TW * 4 + i;  // x, y, z at x[0], x[TW * 4], x[2 * TW * 4]
        const int32_t u = e < 3 ? x[e * TW * 4] & 0x3f
                                : (x[0] >> 6) | ((x[TW * 4] >> 6) << 2) | ((x[2 * TW * 4] >> 6) << 4);
        return u - 32;
    }
    if (VB == 5 && BS == 32) {
        const int d = k / 4, i = j * 4 + k % 4;
        if (d < 5) return (p[d * TW * 4 + i] & 0x1f) - 16;
        int32_t stream = 0;  // bits 5-7 of the 5 vectors' byte i
        for (int m = 0; m < 5; m++) stream |= (p[m * TW * 4 + i] >> 5) << (3 * m);
        return ((stream >> (5 * (d - 5))) & 0x1f) - 16;
    }
    const int kk = k < BS / 2 ? k : k - BS / 2;
    const uint8_t byte = p[(kk / 4) * TW * 4 + j * 4 + kk % 4];
    int32_t u = k < BS / 2 ? (byte & 0x0f) : (byte >> 4);
    const uint8_t* hp = p + TW * BS / 2;
    const int d = k / 4, i = j * 4 + k % 4;  // word, byte of its vector
    constexpr int PB = TW * BS / 8;
    if (HB == 1) u |= ((hp[i % PB] >> (d + (BS / 4) * (i / PB))) & 1) << 4;
    return u - (HB ? 8 << HB : 0);
}

// A compact tile (VB 5 / 6, no offsets) rewritten in the VB-8 layout with float32 scales
template <int VB, int BS>
void expand_tile(const uint8_t* tile, uint8_t* out, int64_t nb, bool half) {
    constexpr int64_t WB = TW * BS * VB / 8;
    const int64_t stride = WB + TW * (half ? 2 : 4);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* p = tile + b * stride;
        uint8_t* q = out + b * (TW * BS + TW * 4);
        for (int j = 0; j < TW; j++) {
            for (int k = 0; k < BS; k++) q[(k / 4) * TW * 4 + j * 4 + k % 4] = (uint8_t)value_at<VB, BS>(p, j, k);
            const float sw = half ? f16_to_f32(((const uint16_t*)(p + WB))[j]) : ((const float*)(p + WB))[j];
            std::memcpy(q + TW * BS + 4 * j, &sw, 4);
        }
    }
}

template <int MR, int VB, bool OFF, bool HALF, int BS>
void tile_kernel(const uint8_t* tile, const uint8_t* pf, const Act& a, int64_t m0, int64_t n0, const Out& o) {
    (void)pf;
    constexpr int64_t WB = TW * BS * VB / 8;
    constexpr int64_t SB = TW * (HALF ? 2 : 4);
    constexpr int64_t STRIDE = WB + SB * (OFF ? 2 : 1);
    const int64_t nb = a.nb;
    float acc[MR][TW];
    #pragma GCC unroll 16
    for (int m = 0; m < MR; m++)
        #pragma GCC unroll 16
        for (int j = 0; j < TW; j++) acc[m][j] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* p = tile + b * STRIDE;
        float sw[TW], ow[TW];
        for (int j = 0; j < TW; j++) {
            if (HALF) {
                sw[j] = f16_to_f32(((const uint16_t*)(p + WB))[j]);
                ow[j] = OFF ? f16_to_f32(((const uint16_t*)(p + WB + SB))[j]) : 0.0f;
            } else {
                sw[j] = ((const float*)(p + WB))[j];
                ow[j] = OFF ? ((const float*)(p + WB + SB))[j] : 0.0f;
            }
        }
        int32_t wv[TW][BS];
        #pragma GCC unroll 16
        for (int j = 0; j < TW; j++) {
            #pragma GCC unroll 16
            for (int k = 0; k < BS; k++) wv[j][k] = value_at<VB, BS>(p, j, k);
        }
        #pragma GCC unroll 16
        for (int m = 0; m < MR; m++) {
            const int8_t* x = a.q + (m0 + m) * a.K + b * BS;
            const float s = a.s[(m0 + m) * nb + b];
            const float so = a.so[(m0 + m) * nb + b];
            #pragma GCC unroll 16
            for (int j = 0; j < TW; j++) {
                int32_t dot = 0;
                #pragma GCC unroll 16
                for (int k = 0; k < BS; k++) dot += wv[j][k] * (int32_t)x[k];
                acc[m][j] = std::fma((float)dot, sw[j] * s, acc[m][j]);
                if (OFF) acc[m][j] = std::fma(ow[j], so, acc[m][j]);
            }
        }
    }
    const int64_t valid = o.N - n0 < TW ? o.N - n0 : TW;
    #pragma GCC unroll 16
    for (int m = 0; m < MR; m++) {
        for (int64_t j = 0; j < valid; j++) {
            float r = o.bias ? acc[m][j] + bias_at(o, n0 + j) : acc[m][j];
            if (o.bf16) ((uint16_t*)o.y)[(m0 + m) * o.ldy + n0 + j] = f32_to_bf16_keep_nan(r);
            else ((float*)o.y)[(m0 + m) * o.ldy + n0 + j] = r;
        }
    }
}
