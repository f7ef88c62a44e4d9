// Int4WeightOnlyLinear's product with the activation row rounded to int8: integer dot products.
//
// With 4-bit weights and float activations, decode is compute-bound: every weight is converted to a
// float and multiplied on its own. Rounding the activations to int8 per block of 32 inputs (scale =
// max|x| / 127, like GGUF's Q8_0) lets AVX-512 VNNI multiply 64 unsigned 4-bit weights by 64 signed
// int8 activations in one instruction (vpdpbusd: four products summed per 32-bit lane). The answer is
// the float product of the dequantized weights with the rounded activations: lane sums are exact
// integers, each scaled once by (weight group scale x activation block scale), so only float32
// summation order differs between the scalar and the VNNI code.
//
// Layout, shared by both. Inputs come in units of 128 (the last may be 64). Packed byte j of a unit
// holds inputs 2j (low nibble) and 2j+1 (high); the prepared activations of a unit of U inputs are its
// U/2 even inputs then its U/2 odd ones, so byte j's two weights meet xq[j] and xq[U/2 + j]. A 32-bit
// lane sums bytes 4i..4i+3, i.e. inputs 8i..8i+7 of the unit: inside one activation block (lanes
// 4b..4b+3) and one weight group, given G a multiple of 32 that divides 128 or is a multiple of it.
// `lane_scale` holds each lane's activation scale (Kp / 8 per row), `xsum` the rounded activations
// summed per weight group (times their scales) for the zero-point term.

namespace q8 {

constexpr int64_t BLOCK = 32, UNIT = 128, LANE = 8;  // activation block, unit of inputs, inputs per lane

// Whether the integer path covers this layout (the caller falls back to the float kernel otherwise):
// whole activation blocks per weight group, lanes within one group, whole 64-input units.
static inline bool fits(int64_t G, int64_t Kp) {
  return G % BLOCK == 0 && (UNIT % G == 0 || G % UNIT == 0) && Kp % 64 == 0;
}

// One row of x (K floats, zero-padded to Kp) -> xq (Kp int8, prepared layout), lane_scale (Kp / 8),
// xsum (Kp / G). Rounding: q = nearbyint(x * (1 / d)), ties to even (torch.round does the same).
static void quantize_row(const float* x, int64_t K, int64_t Kp, int64_t G, int8_t* xq, float* lane_scale,
                         float* xsum) {
  std::fill(xsum, xsum + Kp / G, 0.0f);
  for (int64_t b0 = 0; b0 < Kp; b0 += BLOCK) {
    const int64_t n = std::max<int64_t>(0, std::min<int64_t>(BLOCK, K - b0));  // real inputs in the block
    float amax = 0.0f, q[BLOCK];
    for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[b0 + i]));
    const float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
    int32_t qsum = 0;
    for (int64_t i = 0; i < BLOCK; ++i) {
      q[i] = i < n ? std::max(-127.0f, std::min(127.0f, std::nearbyint(x[b0 + i] * inv))) : 0.0f;
      qsum += (int32_t)q[i];
    }
    // the block's even inputs go to the first half of its unit, the odd ones to the second
    const int64_t u0 = b0 / UNIT * UNIT, half = std::min<int64_t>(UNIT, Kp - u0) / 2, at = u0 + (b0 - u0) / 2;
    for (int64_t i = 0; i < BLOCK / 2; ++i) {
      xq[at + i] = (int8_t)q[2 * i];
      xq[at + half + i] = (int8_t)q[2 * i + 1];
    }
    xsum[b0 / G] += d * (float)qsum;
    for (int64_t l = b0 / LANE; l < (b0 + BLOCK) / LANE; ++l) lane_scale[l] = d;
  }
}

// sum_g scale_g * zero_g * xsum_g: the zero points' share, subtracted once per output.
static inline float zero_term(const float* scale, const uint8_t* zero, const float* xsum, int64_t groups) {
  float out = 0.0f;
  for (int64_t g = 0; g < groups; ++g) out += scale[g] * (float)zero[g] * xsum[g];
  return out;
}

// Portable version: the same lanes, one at a time.
static void rows_scalar(const uint8_t* packed, const float* scale, const uint8_t* zero, const int8_t* xq,
                        const float* lane_scale, const float* xsum, float* y, int M, int64_t N, int64_t Kp, int64_t G,
                        int64_t n0, int64_t n1) {
  const int64_t groups = Kp / G;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = packed + n * (Kp / 2);
    for (int m = 0; m < M; ++m) {
      const int8_t* xm = xq + m * Kp;
      float acc = 0.0f;
      for (int64_t u0 = 0; u0 < Kp; u0 += UNIT) {
        const int64_t U = std::min<int64_t>(UNIT, Kp - u0);
        for (int64_t i = 0; i < U / LANE; ++i) {
          int32_t dot = 0;
          for (int64_t j = 4 * i; j < 4 * i + 4; ++j) {
            const uint8_t b = row[u0 / 2 + j];
            dot += (b & 15) * xm[u0 + j] + (b >> 4) * xm[u0 + U / 2 + j];
          }
          const float s = lane_scale[m * (Kp / LANE) + u0 / LANE + i] * scale[n * groups + (u0 + LANE * i) / G];
          acc += (float)dot * s;
        }
      }
      y[m * N + n] = acc - zero_term(scale + n * groups, zero + n * groups, xsum + m * groups, groups);
    }
  }
}

}  // namespace q8

#ifdef WB_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
namespace q8_vnni {

using namespace q8;

// Weight scales of a unit's `lanes` lanes: lane i belongs to group (u0 + 8i) / G. GU = min(G, 128)
// is a template argument so that no division runs per unit; with GU = 128 the caller passes the
// unit's group `g`. `spread` sends lane i to the loaded group i / (GU / 8) when GU < 128.
template <int GU>
static inline __m512 weight_scales(const float* srow, int64_t u0, int64_t g, __m512i spread, int lanes) {
  if (GU == UNIT) return _mm512_set1_ps(srow[g]);
  const __mmask16 groups = (__mmask16)((1u << (lanes * LANE / GU)) - 1);
  return _mm512_permutexvar_ps(spread, _mm512_maskz_loadu_ps(groups, srow + u0 / GU));
}

// quantize_row, vectorised (the same result bit for bit: the same max, the same product, and the
// conversion rounds to nearest even like nearbyint). Scalar rounding is a library call per input.
static void quantize_row(const float* x, int64_t K, int64_t Kp, int64_t G, int8_t* xq, float* lane_scale,
                         float* xsum) {
  std::fill(xsum, xsum + Kp / G, 0.0f);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  for (int64_t b0 = 0; b0 < Kp; b0 += BLOCK) {
    const int64_t n = std::max<int64_t>(0, std::min<int64_t>(BLOCK, K - b0));  // real inputs in the block
    const __mmask16 k0 = (__mmask16)(n >= 16 ? 0xFFFF : (1u << n) - 1);
    const __mmask16 k1 = (__mmask16)(n >= 32 ? 0xFFFF : (n > 16 ? (1u << (n - 16)) - 1 : 0));
    const __m512 a = _mm512_maskz_loadu_ps(k0, x + b0), b = _mm512_maskz_loadu_ps(k1, x + b0 + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    const float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i qa = _mm512_min_epi32(hi, _mm512_max_epi32(lo, _mm512_cvtps_epi32(_mm512_mul_ps(a, vinv))));
    const __m512i qb = _mm512_min_epi32(hi, _mm512_max_epi32(lo, _mm512_cvtps_epi32(_mm512_mul_ps(b, vinv))));
    const int64_t u0 = b0 / UNIT * UNIT, half = std::min<int64_t>(UNIT, Kp - u0) / 2, at = u0 + (b0 - u0) / 2;
    _mm_storeu_si128((__m128i*)(xq + at), _mm512_cvtsepi32_epi8(_mm512_permutex2var_epi32(qa, even, qb)));
    _mm_storeu_si128((__m128i*)(xq + at + half), _mm512_cvtsepi32_epi8(_mm512_permutex2var_epi32(qa, odd, qb)));
    xsum[b0 / G] += d * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
    _mm_storeu_ps(lane_scale + b0 / LANE, _mm_set1_ps(d));
  }
}

// zero_term, 16 groups at a time (a row of a groups-of-32 matrix has 18 to 48 groups)
static inline float zero_term16(const float* scale, const uint8_t* zero, const float* xsum, int64_t groups) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; g += 16) {
    const __mmask16 k = groups - g >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (groups - g)) - 1);
    const __m512 z = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, zero + g)));
    const __m512 sz = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, scale + g), z);
    acc = _mm512_fmadd_ps(sz, _mm512_maskz_loadu_ps(k, xsum + g), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

template <int M, int R, int GU>
static inline void tile(const uint8_t* packed, const float* scale, const uint8_t* zero, const int8_t* xq,
                        const float* lane_scale, const float* xsum, float* y, int64_t N, int64_t Kp, int64_t G,
                        __m512i spread, int64_t n) {
  const int64_t groups = Kp / G, row_bytes = Kp / 2, lanes_per_row = Kp / LANE;
  const __m512i low4 = _mm512_set1_epi8(15);
  __m512 acc[M][R];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[m][r] = _mm512_setzero_ps();
  int64_t u0 = 0;
  for (; u0 + UNIT <= Kp; u0 += UNIT) {
    const int64_t g = GU == UNIT ? u0 / G : 0;  // the unit's group when G is a multiple of 128
    __m512i xl[M], xh[M];
    __m512 xs[M];
    for (int m = 0; m < M; ++m) {
      xl[m] = _mm512_loadu_si512(xq + m * Kp + u0);
      xh[m] = _mm512_loadu_si512(xq + m * Kp + u0 + UNIT / 2);
      xs[m] = _mm512_loadu_ps(lane_scale + m * lanes_per_row + u0 / LANE);
    }
    for (int r = 0; r < R; ++r) {
      const __m512i v = _mm512_loadu_si512(packed + (n + r) * row_bytes + u0 / 2);
      const __m512i lo = _mm512_and_si512(v, low4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
      const __m512 ws = weight_scales<GU>(scale + (n + r) * groups, u0, g, spread, 16);
      for (int m = 0; m < M; ++m) {
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xl[m]), hi, xh[m]);
        acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(xs[m], ws), acc[m][r]);
      }
    }
  }
  if (u0 < Kp) {  // a last unit of 64 inputs: half-width registers, the upper lanes stay zero
    const __m256i low4y = _mm256_set1_epi8(15);
    __m256i xl[M], xh[M];
    __m512 xs[M];
    for (int m = 0; m < M; ++m) {
      xl[m] = _mm256_loadu_si256((const __m256i*)(xq + m * Kp + u0));
      xh[m] = _mm256_loadu_si256((const __m256i*)(xq + m * Kp + u0 + 32));
      xs[m] = _mm512_maskz_loadu_ps(0xFF, lane_scale + m * lanes_per_row + u0 / LANE);
    }
    for (int r = 0; r < R; ++r) {
      const __m256i v = _mm256_loadu_si256((const __m256i*)(packed + (n + r) * row_bytes + u0 / 2));
      const __m256i lo = _mm256_and_si256(v, low4y), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4y);
      const __m512 ws = weight_scales<GU>(scale + (n + r) * groups, u0, 0, spread, 8);  // GU < 128 here
      for (int m = 0; m < M; ++m) {
        const __m256i dot = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, xl[m]), hi, xh[m]);
        acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_zextsi256_si512(dot)), _mm512_mul_ps(xs[m], ws),
                                    acc[m][r]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m)
      y[m * N + n + r] = _mm512_reduce_add_ps(acc[m][r]) -
                         zero_term16(scale + (n + r) * groups, zero + (n + r) * groups, xsum + m * groups, groups);
}

template <int M, int GU>
static void rows_m(const uint8_t* packed, const float* scale, const uint8_t* zero, const int8_t* xq,
                   const float* lane_scale, const float* xsum, float* y, int64_t N, int64_t Kp, int64_t G,
                   int64_t n0, int64_t n1) {
  constexpr int R = avx512::Tile<M>::R;
  // lane i -> loaded group i / (G / 8) (unused when G is a multiple of 128)
  int32_t lane_group[16];
  for (int i = 0; i < 16; ++i) lane_group[i] = GU == UNIT ? 0 : i * (int)LANE / GU;
  const __m512i spread = _mm512_loadu_si512(lane_group);
  const avx512::RowPrefetch prefetch(packed, Kp / 2, R, n1);
  int64_t n = n0;
  for (; n + R <= n1; n += R) {
    prefetch(n, R);
    prefetch(scale, n, R, Kp / G * 4);  // scales and zero points: streams of their own
    prefetch(zero, n, R, Kp / G);
    tile<M, R, GU>(packed, scale, zero, xq, lane_scale, xsum, y, N, Kp, G, spread, n);
  }
  for (; n < n1; ++n) tile<M, 1, GU>(packed, scale, zero, xq, lane_scale, xsum, y, N, Kp, G, spread, n);
}

static void rows(const uint8_t* packed, const float* scale, const uint8_t* zero, const int8_t* xq,
                 const float* lane_scale, const float* xsum, float* y, int M_, int64_t N, int64_t Kp, int64_t G,
                 int64_t n0, int64_t n1) {
  if (G == 32) {
    WB_SWITCH_M(M_, (rows_m<M, 32>(packed, scale, zero, xq, lane_scale, xsum, y, N, Kp, G, n0, n1)));
  } else if (G == 64) {
    WB_SWITCH_M(M_, (rows_m<M, 64>(packed, scale, zero, xq, lane_scale, xsum, y, N, Kp, G, n0, n1)));
  } else {  // a multiple of 128: one group per unit
    WB_SWITCH_M(M_, (rows_m<M, UNIT>(packed, scale, zero, xq, lane_scale, xsum, y, N, Kp, G, n0, n1)));
  }
}

}  // namespace q8_vnni
#pragma GCC pop_options
#endif
