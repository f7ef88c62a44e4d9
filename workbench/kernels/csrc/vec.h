// Vector "traits" the matrix-vector kernels are written against: one struct per instruction set.
// Each gives W lanes of float and the loads that turn stored weights (float32, bfloat16, int8, 4-bit
// nibbles) into W floats. matvec_body.h is compiled once per struct, each under its own target, and
// the caller picks one at run time from the CPU's features.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

// float16 -> float32 without F16C (the scalar path): exact, subnormals included.
static inline float half_to_float_portable(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (man << 13);  // inf / nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do { man <<= 1; ++e; } while (!(man & 0x400));
    bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

static inline float bf16_to_float(uint16_t b) {
  uint32_t bits = (uint32_t)b << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

static inline uint16_t load_u16(const uint8_t* p) {  // unaligned little-endian (GGUF block headers)
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

static inline int32_t load_i32(const int8_t* p) {  // four bytes, unaligned
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

struct VecScalar {
  using F = float;
  static constexpr int W = 1;
  static F zero() { return 0.0f; }
  static F set1(float a) { return a; }
  static F load(const float* p) { return *p; }
  static F fma(F a, F b, F c) { return a * b + c; }
  static float sum(F a) { return a; }
  static F load_w(const float* p) { return *p; }
  static F load_w(const uint16_t* p) { return bf16_to_float(*p); }
  static F load_w(const int8_t* p) { return (float)*p; }
  // W bytes -> their low and high nibbles as floats
  static void nibbles(const uint8_t* p, F& lo, F& hi) { lo = (float)(*p & 15); hi = (float)(*p >> 4); }
  static float half(uint16_t h) { return half_to_float_portable(h); }
};

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define WB_X86 1

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
struct VecAVX2 {
  using F = __m256;
  static constexpr int W = 8;
  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float a) { return _mm256_set1_ps(a); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static float sum(F a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static F load_w(const float* p) { return _mm256_loadu_ps(p); }
  static F load_w(const uint16_t* p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
  static F load_w(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
  }
  static void nibbles(const uint8_t* p, F& lo, F& hi) {
    __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p));
    lo = _mm256_cvtepi32_ps(_mm256_and_si256(b, _mm256_set1_epi32(15)));
    hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
  }
  static float half(uint16_t h) { return _cvtsh_ss(h); }
};
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
struct VecAVX512 {
  using F = __m512;
  static constexpr int W = 16;
  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float a) { return _mm512_set1_ps(a); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(F a) { return _mm512_reduce_add_ps(a); }
  static F load_w(const float* p) { return _mm512_loadu_ps(p); }
  static F load_w(const uint16_t* p) {
    __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
  }
  static F load_w(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
  }
  static void nibbles(const uint8_t* p, F& lo, F& hi) {
    __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
    lo = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(15)));
    hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
  }
  static float half(uint16_t h) { return _cvtsh_ss(h); }
};
#pragma GCC pop_options
#endif
