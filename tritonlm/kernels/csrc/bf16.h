// bfloat16 <-> float32 conversions shared by the C++ sources of tritonlm/kernels/csrc. Each source
// builds into its own shared library (tritonlm/kernels/_native.py, whose cache hash covers this
// header), so everything here has internal linkage.
//
// A bfloat16 is the top half of a float32. Both roundings are to nearest even on the bits and
// differ only in what a NaN becomes:
// * f32_to_bf16: the canonical quiet NaN 0x7fc0, as c10::BFloat16 (cpu_ops replays torch's bits);
// * f32_to_bf16_keep_nan: the NaN with its sign and payload, made quiet (quant_gemm, whose AVX-512
//   path rounds its outputs the same way in vector code).

#pragma once

#include <cstdint>
#include <cstring>

namespace {

inline float bf16_to_f32(uint16_t v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)0x7fc0 : (uint16_t)r;
}

inline uint16_t f32_to_bf16_keep_nan(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

// x rounded to bfloat16 and back: one torch op's rounding of a bfloat16 result
inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

}  // namespace
