// GGUF Q4_0 / Q4_1 blocks times an activation row rounded to int8 per block of 32 (as llama.cpp
// multiplies them): integer dot products on AVX-512 VNNI, a portable loop elsewhere.
//
// A block holds 32 weights: a float16 scale d (Q4_1: and a float16 offset m), then 16 bytes whose
// low nibbles are weights 0-15 and high nibbles weights 16-31; w = d * (q - 8) (Q4_0) or d * q + m
// (Q4_1), q in 0..15. The activation block of the same 32 inputs is xq * dx (xq = nearbyint(x / dx),
// dx = max|x| / 127). Per block, sum w * x = d * dx * sum(q * xq) + c * xsum, with xsum = dx * sum(xq)
// and c = -8 d (Q4_0) or m (Q4_1): the integer sum is exact (vpdpbusd: unsigned q times signed xq),
// so only float32 summation order differs between the two versions.

namespace blocks_q8 {

constexpr int64_t BLOCK = 32;

static inline bool fits(int64_t type, int64_t K) { return (type == 1 || type == 2) && K % BLOCK == 0; }

// One row of x (K floats) -> xq (K int8, in order), dx (K / 32 scales), xsum (K / 32: dx * sum(xq))
// and, where isum is not null, the integer sums themselves (8-bit tiles correct by them).
static void quantize_row(const float* x, int64_t K, int8_t* xq, float* dx, float* xsum, int32_t* isum = nullptr) {
  for (int64_t b = 0; b < K / BLOCK; ++b) {
    const float* xb = x + b * BLOCK;
    float amax = 0.0f;
    for (int64_t i = 0; i < BLOCK; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
    int32_t sum = 0;
    for (int64_t i = 0; i < BLOCK; ++i) {
      const int32_t q = (int32_t)std::max(-127.0f, std::min(127.0f, std::nearbyint(xb[i] * inv)));
      xq[b * BLOCK + i] = (int8_t)q;
      sum += q;
    }
    dx[b] = d;
    xsum[b] = d * (float)sum;
    if (isum) isum[b] = sum;
  }
}

// The block's scale d and offset coefficient c (see the top of the file).
static inline void block_terms(int64_t type, const uint8_t* blk, float& d, float& c) {
  d = half_to_float_portable(load_u16(blk));
  c = type == 1 ? -8.0f * d : half_to_float_portable(load_u16(blk + 2));
}

static void rows_scalar(int64_t type, const uint8_t* raw, const int8_t* xq, const float* dx, const float* xsum,
                        float* y, int M, int64_t N, int64_t K, int64_t n0, int64_t n1) {
  const int64_t blocks = K / BLOCK, bb = type == 1 ? 18 : 20, head = bb - 16;
  for (int64_t n = n0; n < n1; ++n)
    for (int m = 0; m < M; ++m) {
      float acc = 0.0f;
      for (int64_t b = 0; b < blocks; ++b) {
        const uint8_t* blk = raw + (n * blocks + b) * bb;
        const int8_t* xb = xq + m * K + b * BLOCK;
        float d, c;
        block_terms(type, blk, d, c);
        int32_t dot = 0;
        for (int j = 0; j < 16; ++j) dot += (blk[head + j] & 15) * xb[j] + (blk[head + j] >> 4) * xb[16 + j];
        acc += d * dx[m * blocks + b] * (float)dot + c * xsum[m * blocks + b];
      }
      y[m * N + n] = acc;
    }
}

}  // namespace blocks_q8

#ifdef WB_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
namespace blocks_q8_vnni {

using blocks_q8::BLOCK;

static inline void block_terms(int64_t type, const uint8_t* blk, float& d, float& c) {
  d = _cvtsh_ss(load_u16(blk));
  c = type == 1 ? -8.0f * d : _cvtsh_ss(load_u16(blk + 2));
}

// blocks_q8::quantize_row, vectorised (the same result bit for bit: the same max and product, and the
// conversion rounds to nearest even like nearbyint, which is a library call per input in scalar code).
static void quantize_row(const float* x, int64_t K, int8_t* xq, float* dx, float* xsum, int32_t* isum = nullptr) {
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  for (int64_t b = 0; b < K / BLOCK; ++b) {
    const __m512 a = _mm512_loadu_ps(x + b * BLOCK), c = _mm512_loadu_ps(x + b * BLOCK + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(c)));
    const float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i qa = _mm512_min_epi32(hi, _mm512_max_epi32(lo, _mm512_cvtps_epi32(_mm512_mul_ps(a, vinv))));
    const __m512i qc = _mm512_min_epi32(hi, _mm512_max_epi32(lo, _mm512_cvtps_epi32(_mm512_mul_ps(c, vinv))));
    _mm_storeu_si128((__m128i*)(xq + b * BLOCK), _mm512_cvtsepi32_epi8(qa));
    _mm_storeu_si128((__m128i*)(xq + b * BLOCK + 16), _mm512_cvtsepi32_epi8(qc));
    const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qc));
    dx[b] = d;
    xsum[b] = d * (float)sum;
    if (isum) isum[b] = sum;
  }
}

// 32 weights of a block as bytes 0..15 in order: low nibbles, then high nibbles.
static inline __m256i nibbles(const uint8_t* qs) {
  const __m128i v = _mm_loadu_si128((const __m128i*)qs), low4 = _mm_set1_epi8(15);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), low4), _mm_and_si128(v, low4));
}

template <int M>
static void rows_m(int64_t type, const uint8_t* raw, const int8_t* xq, const float* dx, const float* xsum, float* y,
                   int64_t N, int64_t K, int64_t n0, int64_t n1) {
  const int64_t blocks = K / BLOCK, bb = type == 1 ? 18 : 20, head = bb - 16, row_bytes = blocks * bb;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = raw + n * row_bytes;
    if (n + 4 < n1) {  // the row after next: blocks are read once, straight from memory
      for (int64_t off = 0; off < row_bytes; off += 64) _mm_prefetch((const char*)(row + 4 * row_bytes + off), _MM_HINT_T0);
    }
    __m512 acc[M];
    float corr[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps(), corr[m] = 0.0f;
    int64_t b = 0;
    for (; b + 2 <= blocks; b += 2) {  // two blocks per 512-bit register: 16 lanes, 8 per block
      const uint8_t *b0 = row + b * bb, *b1 = b0 + bb;
      float d0, c0, d1, c1;
      block_terms(type, b0, d0, c0);
      block_terms(type, b1, d1, c1);
      const __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(nibbles(b0 + head)), nibbles(b1 + head), 1);
      for (int m = 0; m < M; ++m) {
        const int64_t at = m * blocks + b;
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w,
                                                _mm512_loadu_si512(xq + m * K + b * BLOCK));
        const __m512 s = _mm512_insertf32x8(_mm512_set1_ps(d0 * dx[at]), _mm256_set1_ps(d1 * dx[at + 1]), 1);
        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[m]);
        corr[m] += c0 * xsum[at] + c1 * xsum[at + 1];
      }
    }
    if (b < blocks) {  // an odd last block: the lower half only
      const uint8_t* b0 = row + b * bb;
      float d0, c0;
      block_terms(type, b0, d0, c0);
      const __m512i w = _mm512_castsi256_si512(nibbles(b0 + head));
      for (int m = 0; m < M; ++m) {
        const int64_t at = m * blocks + b;
        const __m512i x = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i*)(xq + m * K + b * BLOCK)));
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_zextsi256_si512(
                                                    _mm512_castsi512_si256(w)), x);
        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(d0 * dx[at]), acc[m]);
        corr[m] += c0 * xsum[at];
      }
    }
    for (int m = 0; m < M; ++m) y[m * N + n] = _mm512_reduce_add_ps(acc[m]) + corr[m];
  }
}

static void rows(int64_t type, const uint8_t* raw, const int8_t* xq, const float* dx, const float* xsum, float* y,
                 int M_, int64_t N, int64_t K, int64_t n0, int64_t n1) {
  WB_SWITCH_M(M_, (rows_m<M>(type, raw, xq, dx, xsum, y, N, K, n0, n1)));
}

// The tile layout and its builders: tiles.h.
using tile_layout::TILE;
using tile_layout::TILE_BYTES;
using tile_layout::TILE_NIBBLES;
using tile_layout::tile_block_bytes;
using tile_layout::TileKind;
using tile_layout::NIBBLES_F16;
using tile_layout::NIBBLES_F32;
using tile_layout::BYTES_F32;
namespace tile_kinds = tile_layout::tile_kinds;

// Rows m0..m0+M-1 of x against tile t: y[m, 16t..16t+15].
template <int M, int KIND>
static inline void tile_m(const uint8_t* tile, const int8_t* xq, const float* dx, const float* xsum,
                          const int32_t* isum, const float* row_scale, float* y, int64_t N, int64_t K, int64_t n0) {
  constexpr bool F32 = KIND != NIBBLES_F16, BYTES = KIND == BYTES_F32 || KIND == tile_kinds::BYTES;
  constexpr bool HEAD = KIND != tile_kinds::BYTES;  // per-block d (else the rows' scales, at the end)
  constexpr int64_t TILE_BLOCK = tile_block_bytes(KIND);
  constexpr int64_t head = BYTES ? (HEAD ? 64 : 0) : TILE_BLOCK - TILE_NIBBLES;
  const int64_t blocks = K / BLOCK;
  const __m512i low4 = _mm512_set1_epi8(15);
  __m512 acc[M];
  for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* tb = tile + b * TILE_BLOCK;
    const __m512 d = !HEAD ? _mm512_set1_ps(1.0f)
                     : F32 ? _mm512_loadu_ps(tb) : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)tb));
    __m512 c = _mm512_setzero_ps();
    __m512i w[8];  // w[j]: weights 4j..4j+3 of each row
    if (BYTES) {
      for (int j = 0; j < 8; ++j) w[j] = _mm512_loadu_si512(tb + head + 64 * j);
    } else {
      c = F32 ? _mm512_loadu_ps(tb + 64) : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(tb + 32)));
      for (int j = 0; j < 4; ++j) {
        const __m512i v = _mm512_loadu_si512(tb + head + 64 * j);
        w[j] = _mm512_and_si512(v, low4);
        w[4 + j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
      }
    }
    for (int m = 0; m < M; ++m) {
      const int8_t* xb = xq + m * K + b * BLOCK;
      // two chains: half the latency; 8-bit weights start from -128 * sum(xq), their offset
      __m512i s0 = BYTES ? _mm512_set1_epi32(-128 * isum[m * blocks + b]) : _mm512_setzero_si512();
      __m512i s1 = _mm512_setzero_si512();
      for (int j = 0; j < 4; ++j) {
        s0 = _mm512_dpbusd_epi32(s0, w[j], _mm512_set1_epi32(load_i32(xb + 4 * j)));
        s1 = _mm512_dpbusd_epi32(s1, w[4 + j], _mm512_set1_epi32(load_i32(xb + 16 + 4 * j)));
      }
      const __m512 s = HEAD ? _mm512_mul_ps(d, _mm512_set1_ps(dx[m * blocks + b])) : _mm512_set1_ps(dx[m * blocks + b]);
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), s, acc[m]);
      if (!BYTES) acc[m] = _mm512_fmadd_ps(c, _mm512_set1_ps(xsum[m * blocks + b]), acc[m]);
    }
  }
  const __mmask16 keep = N - n0 >= TILE ? (__mmask16)0xFFFF : (__mmask16)((1u << (N - n0)) - 1);
  if (!HEAD) {
    const __m512 scale = _mm512_maskz_loadu_ps(keep, row_scale + n0);
    for (int m = 0; m < M; ++m) acc[m] = _mm512_mul_ps(acc[m], scale);
  }
  for (int m = 0; m < M; ++m) _mm512_mask_storeu_ps(y + m * N + n0, keep, acc[m]);
}

// Tiles [t0, t1) against all `rows` rows of x, 4 rows at a time (the tile's weights stay in L1).
template <int KIND>
static void tiles_rows(const uint8_t* tiles, const int8_t* xq, const float* dx, const float* xsum,
                       const int32_t* isum, const float* row_scale, float* y, int64_t rows, int64_t N, int64_t K,
                       int64_t t0, int64_t t1) {
  const int64_t blocks = K / BLOCK, tile_bytes = blocks * tile_block_bytes(KIND);
  for (int64_t t = t0; t < t1; ++t) {
    const uint8_t* tile = tiles + t * tile_bytes;
    // No software prefetch: a thread's tiles are one sequential stream, which the hardware
    // prefetcher follows; asking for the tile after next as well made decode products 3-26% slower.
    for (int64_t m0 = 0; m0 < rows; m0 += 4) {
      const int64_t at = m0 * blocks;
      WB_SWITCH_M((int)std::min<int64_t>(4, rows - m0),
                  (tile_m<M, KIND>(tile, xq + m0 * K, dx + at, xsum + at, isum + at, row_scale, y + m0 * N, N, K,
                                   t * TILE)));
    }
  }
}

}  // namespace blocks_q8_vnni
#pragma GCC pop_options
#endif
