// cpu_ops: paged decode attention (float32 math in a fixed order per sequence and kv head).
// Included by cpu_ops.cpp inside its anonymous namespace (needs its exp and bf16 helpers); not a
// standalone header.
#pragma once

// ---- paged decode attention ----------------------------------------------------------------------
typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));

inline v16 load16f(const float* p) {
    v16 v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

template <bool BF16>
inline v16 load16(const void* p, int64_t i) {
    if constexpr (BF16) {
        u16x16 h;
        std::memcpy(&h, (const uint16_t*)p + i, sizeof(h));
        const u32x16 w = __builtin_convertvector(h, u32x16) << 16;
        return (v16)w;
    } else {
        return load16f((const float*)p + i);
    }
}

// a * b + c rounded once per lane (IEEE fma: vfmadd where the target has FMA, libm's fma elsewhere:
// the same bits on every machine)
inline v16 fmadd(v16 a, v16 b, v16 c) {
#if defined(__AVX512F__)
    return (v16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__) && defined(__AVX__)
    const __m256 lo = _mm256_fmadd_ps((__m256)__builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7),
                                      (__m256)__builtin_shufflevector(b, b, 0, 1, 2, 3, 4, 5, 6, 7),
                                      (__m256)__builtin_shufflevector(c, c, 0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 hi = _mm256_fmadd_ps((__m256)__builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15),
                                      (__m256)__builtin_shufflevector(b, b, 8, 9, 10, 11, 12, 13, 14, 15),
                                      (__m256)__builtin_shufflevector(c, c, 8, 9, 10, 11, 12, 13, 14, 15));
    return __builtin_shufflevector((v8)lo, (v8)hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#else
    v16 r;
    for (int i = 0; i < 16; ++i) r[i] = std::fma(a[i], b[i], c[i]);
    return r;
#endif
}

inline v16 splat(float x) { return (v16){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }

// a fixed tree: halves, then quarters, then (0 + 2) + (1 + 3)
inline float hsum16(v16 v) {
    const v8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    const v4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (b[0] + b[2]) + (b[1] + b[3]);
}

struct AttnArgs {
    const void* q;
    int64_t q_sB, q_sH;
    const void* kc;
    const void* vc;
    int64_t S, Hk, D, Hq;
    const void* bt;
    int64_t bt64;
    int64_t bt_ld;
    const void* cl;
    int64_t cl64;
    float scale;
    void* out;  // [B, Hq, D] contiguous, q's dtype
};

inline int64_t idx_at(const void* p, int64_t is64, int64_t i) {
    return is64 ? ((const int64_t*)p)[i] : (int64_t)((const int32_t*)p)[i];
}

// 16 dot-product accumulators (one per key, lanes over D) -> the 16 sums, lane i = key i, each by
// the tree of hsum16 (so a key's score is the same bits here and through hsum16 in a tail chunk):
// lanes l + l^8, then + l^4, then (0 + 2) + (1 + 3).
inline v16 reduce16(const v16* p) {
    v16 r1[8], r2[4], r3[2];
    for (int j = 0; j < 8; ++j)
        r1[j] = __builtin_shufflevector(p[2 * j], p[2 * j + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
                __builtin_shufflevector(p[2 * j], p[2 * j + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    for (int j = 0; j < 4; ++j)
        r2[j] = __builtin_shufflevector(r1[2 * j], r1[2 * j + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
                __builtin_shufflevector(r1[2 * j], r1[2 * j + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    for (int j = 0; j < 2; ++j)
        r3[j] = __builtin_shufflevector(r2[2 * j], r2[2 * j + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
                __builtin_shufflevector(r2[2 * j], r2[2 * j + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
    return __builtin_shufflevector(r3[0], r3[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
           __builtin_shufflevector(r3[0], r3[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

constexpr int kChunk = 16;  // keys per chunk: their K / V rows converted to float32 once, for all G heads

// The cache rows (this kv head) of positions t0 .. t0 + n - 1 as float32 rows of D in buf.
template <int ND, bool CB>
inline void gather_rows(const AttnArgs& a, const void* cache, int64_t bt_row, int64_t t0, int64_t n, int64_t kvh,
                        float* buf) {
    constexpr int64_t D = ND * 16;
    int64_t j = t0 / a.S, o = t0 % a.S;
    int64_t base = idx_at(a.bt, a.bt64, bt_row + j) * a.S;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t elem = ((base + o) * a.Hk + kvh) * D;
        for (int d = 0; d < ND; ++d) {
            const v16 v = load16<CB>(cache, elem + d * 16);
            std::memcpy(buf + i * D + d * 16, &v, sizeof(v));
        }
        if (++o == a.S && i + 1 < n) {
            o = 0;
            base = idx_at(a.bt, a.bt64, bt_row + ++j) * a.S;
        }
    }
}

// One (sequence b, kv head) item: its G = Hq / Hk query heads over the sequence's L keys. Every
// sum runs in an order fixed by L and the positions alone.
template <int ND, bool QB, bool CB>
void attend_item(const AttnArgs& a, int64_t b, int64_t kvh) {
    constexpr int64_t D = ND * 16;
    const int64_t G = a.Hq / a.Hk;
    const int64_t L = idx_at(a.cl, a.cl64, b);
    const int64_t bt_row = b * a.bt_ld;
    float* qf = scratch(0, G * D).data();
    float* sc = scratch(1, G * L + 16).data();
    float* acc = scratch(2, G * D + kChunk * D).data();
    float* buf = acc + G * D;  // [kChunk, D]
    for (int64_t g = 0; g < G; ++g) {
        const char* qr = (const char*)a.q + (b * a.q_sB + (kvh * G + g) * a.q_sH) * (QB ? 2 : 4);
        for (int64_t d = 0; d < D; ++d) qf[g * D + d] = ld<QB>(qr, d);
    }
    // scores s[g][t] = (q_g . k_t) * scale: per key 16 lanes over D / 16 products, then the tree of hsum16
    const v16 scale = splat(a.scale);
    for (int64_t t0 = 0; t0 < L; t0 += kChunk) {
        const int64_t n = std::min<int64_t>(kChunk, L - t0);
        gather_rows<ND, CB>(a, a.kc, bt_row, t0, n, kvh, buf);
        for (int64_t g = 0; g < G; ++g) {
            v16 q[ND];
            for (int d = 0; d < ND; ++d) q[d] = load16f(qf + g * D + d * 16);
            if (n == kChunk) {
                v16 p[kChunk];
                for (int i = 0; i < kChunk; ++i) {
                    p[i] = q[0] * load16f(buf + i * D);
                    for (int d = 1; d < ND; ++d) p[i] = fmadd(q[d], load16f(buf + i * D + d * 16), p[i]);
                }
                const v16 s = reduce16(p) * scale;
                std::memcpy(sc + g * L + t0, &s, sizeof(s));
            } else {
                for (int64_t i = 0; i < n; ++i) {
                    v16 p = q[0] * load16f(buf + i * D);
                    for (int d = 1; d < ND; ++d) p = fmadd(q[d], load16f(buf + i * D + d * 16), p);
                    sc[g * L + t0 + i] = hsum16(p) * a.scale;
                }
            }
        }
    }
    // softmax numerators exp(s - max) in place; their sum as 16 lanes (t mod 16), then hsum16
    float inv_stack[64];
    std::vector<float> inv_heap;
    float* sums = inv_stack;
    if (G > 64) {
        inv_heap.resize(G);
        sums = inv_heap.data();
    }
    for (int64_t g = 0; g < G; ++g) {
        float* s = sc + g * L;
        float mx[16];  // the max as 16 lanes (the same value in any order)
        for (int l = 0; l < 16; ++l) mx[l] = s[0];
        for (int64_t t0 = 0; t0 < L; t0 += 16) {
            const int64_t n = std::min<int64_t>(16, L - t0);
            for (int l = 0; l < n; ++l) mx[l] = s[t0 + l] > mx[l] ? s[t0 + l] : mx[l];
        }
        float m = mx[0];
        for (int l = 1; l < 16; ++l) m = mx[l] > m ? mx[l] : m;
        for (int64_t t = 0; t < L; ++t) s[t] = sleef_expf(s[t] - m);
        float lanes[16] = {0};
        const int64_t L16 = L / 16 * 16;
        for (int64_t t = 0; t < L16; t += 16)
            for (int l = 0; l < 16; ++l) lanes[l] += s[t + l];
        for (int64_t t = L16; t < L; ++t) lanes[t - L16] += s[t];
        sums[g] = hsum16(load16f(lanes));
    }
    // out[g] = (sum_t e[g][t] * v_t) / sum[g], the keys in order
    for (int64_t i = 0; i < G * D; ++i) acc[i] = 0.0f;
    for (int64_t t0 = 0; t0 < L; t0 += kChunk) {
        const int64_t n = std::min<int64_t>(kChunk, L - t0);
        gather_rows<ND, CB>(a, a.vc, bt_row, t0, n, kvh, buf);
        for (int64_t g = 0; g < G; ++g) {
            v16 o[ND];
            for (int d = 0; d < ND; ++d) o[d] = load16f(acc + g * D + d * 16);
            const float* e = sc + g * L + t0;
            for (int64_t i = 0; i < n; ++i) {
                const v16 ei = splat(e[i]);
                for (int d = 0; d < ND; ++d) o[d] = fmadd(ei, load16f(buf + i * D + d * 16), o[d]);
            }
            for (int d = 0; d < ND; ++d) std::memcpy(acc + g * D + d * 16, &o[d], sizeof(v16));
        }
    }
    for (int64_t g = 0; g < G; ++g) {
        char* orow = (char*)a.out + ((b * a.Hq) + kvh * G + g) * D * (QB ? 2 : 4);
        for (int64_t d = 0; d < D; ++d) st<QB>(orow, d, acc[g * D + d] / sums[g]);
    }
}

typedef void (*attend_fn)(const AttnArgs&, int64_t, int64_t);

template <int ND>
attend_fn pick_attend(int qb, int cb) {
    if (qb && cb) return attend_item<ND, true, true>;
    if (qb) return attend_item<ND, true, false>;
    if (cb) return attend_item<ND, false, true>;
    return attend_item<ND, false, false>;
}

attend_fn attend_for(int64_t D, int qb, int cb) {
    switch (D) {
        case 32: return pick_attend<2>(qb, cb);
        case 64: return pick_attend<4>(qb, cb);
        case 80: return pick_attend<5>(qb, cb);
        case 96: return pick_attend<6>(qb, cb);
        case 128: return pick_attend<8>(qb, cb);
        case 256: return pick_attend<16>(qb, cb);
        default: return nullptr;
    }
}
