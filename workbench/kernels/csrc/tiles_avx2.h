// Weight tiles (tiles.h) times activation rows rounded to int8 per block of 32, on AVX2: the same
// products as gguf_q8.h's VNNI kernel, for CPUs without AVX-512 VNNI (AMD Zen 2 and 3, most Intel
// desktop parts before 2021).
//
// AVX2 has no vpdpbusd. vpmaddubsw multiplies unsigned bytes by signed ones and adds pairs into
// int16 (saturating), and vpmaddwd by ones adds those pairs into int32: two instructions for the
// 4-input dot products of 8 rows. 4-bit weights are unsigned (0..15), so 15 * 127 * 2 cannot saturate.
// 8-bit weights are signed, so each product is taken as |q| times xq with q's sign (vpsignb), as
// llama.cpp's AVX2 Q8_0 product does: |q| <= 128 fits a byte and |xq| <= 127, so a pair is at most
// 32512 and nothing saturates. Every integer sum is therefore exact, the float steps are those of
// the VNNI kernel in the same order, and both kernels give the same results bit for bit.

#ifdef WB_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace tiles_avx2 {

using tile_layout::BLOCK;
using tile_layout::TILE;
using tile_layout::TILE_NIBBLES;
using tile_layout::tile_block_bytes;

static inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

static inline int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1))));
}

// blocks_q8::quantize_row, vectorised: the same max, scale and products, and the conversion rounds
// to nearest even like nearbyint, so xq, dx, xsum and isum are the same bit for bit.
static void quantize_row(const float* x, int64_t K, int8_t* xq, float* dx, float* xsum, int32_t* isum = nullptr) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undoes the lane-wise packs
  for (int64_t b = 0; b < K / BLOCK; ++b) {
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(x + b * BLOCK + 8 * i);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
    }
    const float d = hmax(amax) / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
    const __m256 vinv = _mm256_set1_ps(inv);
    __m256i q[4];
    for (int i = 0; i < 4; ++i)
      q[i] = _mm256_min_epi32(hi, _mm256_max_epi32(lo, _mm256_cvtps_epi32(_mm256_mul_ps(v[i], vinv))));
    const int32_t sum = hsum(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256((__m256i*)(xq + b * BLOCK), _mm256_permutevar8x32_epi32(bytes, order));
    dx[b] = d;
    xsum[b] = d * (float)sum;
    if (isum) isum[b] = sum;
  }
}

// Rows m0..m0+M-1 of x against tile t: y[m, 16t..16t+15]; the two halves h of a tile are rows
// 8h..8h+7, one 256-bit register each. Several rows take one half at a time over all of K, so that
// their sums and accumulators (2M registers) stay in the 16 registers AVX2 has: with both halves at
// once the compiler keeps each input's broadcast for the second half and spills to the stack. One
// row (a decode step) takes both halves in one pass, reading each weight chunk once.
template <int M, int KIND>
static inline void tile_m(const uint8_t* tile, const int8_t* xq, const float* dx, const float* xsum,
                          const float* row_scale, float* y, int64_t N, int64_t K, int64_t n0) {
  using namespace tile_layout;
  constexpr bool F32 = KIND != NIBBLES_F16, BYTES8 = KIND == BYTES_F32 || KIND == tile_kinds::BYTES;
  constexpr bool HEAD = KIND != tile_kinds::BYTES;  // per-block d (else the rows' scales, at the end)
  constexpr int64_t TILE_BLOCK = tile_block_bytes(KIND);
  constexpr int64_t head = BYTES8 ? (HEAD ? 64 : 0) : TILE_BLOCK - TILE_NIBBLES;
  constexpr int H = M == 1 ? 2 : 1;  // halves per pass
  const int64_t blocks = K / BLOCK, live = std::min<int64_t>(TILE, N - n0);
  const __m256i low4 = _mm256_set1_epi8(15), flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
  for (int h0 = 0; h0 < 2; h0 += H) {
    __m256 acc[M][H];
    for (int m = 0; m < M; ++m)
      for (int i = 0; i < H; ++i) acc[m][i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* tb = tile + b * TILE_BLOCK;
      const int8_t* xb = xq + b * BLOCK;
      __m256i s[M][H];
      for (int m = 0; m < M; ++m)
        for (int i = 0; i < H; ++i) s[m][i] = _mm256_setzero_si256();
      if (BYTES8) {
#pragma GCC unroll 1
        for (int j = 0; j < 8; ++j) {  // chunk j: weights 4j..4j+3 of each row, stored as q + 128
          __m256i q[H], aq[H];
          for (int i = 0; i < H; ++i) {
            q[i] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(tb + head + 64 * j + 32 * (h0 + i))), flip);
            aq[i] = _mm256_abs_epi8(q[i]);
          }
          for (int m = 0; m < M; ++m) {
            const __m256i xv = _mm256_set1_epi32(load_i32(xb + m * K + 4 * j));
            for (int i = 0; i < H; ++i) {
              const __m256i pairs = _mm256_maddubs_epi16(aq[i], _mm256_sign_epi8(xv, q[i]));
              s[m][i] = _mm256_add_epi32(s[m][i], _mm256_madd_epi16(pairs, ones));
            }
          }
        }
      } else {
#pragma GCC unroll 1
        for (int j = 0; j < 4; ++j) {  // chunk j: low nibbles weights 4j.., high nibbles 16+4j..
          __m256i wl[H], wh[H];
          for (int i = 0; i < H; ++i) {
            const __m256i v = _mm256_loadu_si256((const __m256i*)(tb + head + 64 * j + 32 * (h0 + i)));
            wl[i] = _mm256_and_si256(v, low4);
            wh[i] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
          }
          for (int m = 0; m < M; ++m) {
            const __m256i xl = _mm256_set1_epi32(load_i32(xb + m * K + 4 * j));
            const __m256i xh = _mm256_set1_epi32(load_i32(xb + m * K + 16 + 4 * j));
            for (int i = 0; i < H; ++i) {
              // 15 * 127 * 4 fits int16: both halves' pairs are added before widening
              const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(wl[i], xl), _mm256_maddubs_epi16(wh[i], xh));
              s[m][i] = _mm256_add_epi32(s[m][i], _mm256_madd_epi16(pairs, ones));
            }
          }
        }
      }
      for (int i = 0; i < H; ++i) {
        const int h = h0 + i;
        const __m256 d = !HEAD ? _mm256_set1_ps(1.0f)
                         : F32 ? _mm256_loadu_ps((const float*)tb + 8 * h)
                               : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(tb + 16 * h)));
        const __m256 c = BYTES8 ? _mm256_setzero_ps()
                         : F32 ? _mm256_loadu_ps((const float*)(tb + 64) + 8 * h)
                               : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(tb + 32 + 16 * h)));
        for (int m = 0; m < M; ++m) {
          const __m256 scale = HEAD ? _mm256_mul_ps(d, _mm256_set1_ps(dx[m * blocks + b])) : _mm256_set1_ps(dx[m * blocks + b]);
          acc[m][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[m][i]), scale, acc[m][i]);
          if (!BYTES8) acc[m][i] = _mm256_fmadd_ps(c, _mm256_set1_ps(xsum[m * blocks + b]), acc[m][i]);
        }
      }
    }
    for (int i = 0; i < H; ++i) {
      const int h = h0 + i;
      const int64_t n = std::min<int64_t>(8, live - 8 * h);
      if (n <= 0) break;
      float sc[8] = {1, 1, 1, 1, 1, 1, 1, 1};
      if (!HEAD)
        for (int r = 0; r < n; ++r) sc[r] = row_scale[n0 + 8 * h + r];
      for (int m = 0; m < M; ++m) {
        float out[8];
        _mm256_storeu_ps(out, HEAD ? acc[m][i] : _mm256_mul_ps(acc[m][i], _mm256_loadu_ps(sc)));
        std::copy(out, out + n, y + m * N + n0 + 8 * h);
      }
    }
  }
}

// Tiles [t0, t1) against all `rows` rows of x, 4 rows at a time (the tile's weights stay in L1).
template <int KIND>
static void tiles_rows(const uint8_t* tiles, const int8_t* xq, const float* dx, const float* xsum,
                       const float* row_scale, float* y, int64_t rows, int64_t N, int64_t K, int64_t t0, int64_t t1) {
  const int64_t blocks = K / BLOCK, tile_bytes = blocks * tile_block_bytes(KIND);
  for (int64_t t = t0; t < t1; ++t)
    for (int64_t m0 = 0; m0 < rows; m0 += 4) {
      const int64_t at = m0 * blocks;
      WB_SWITCH_M((int)std::min<int64_t>(4, rows - m0),
                  (tile_m<M, KIND>(tiles + t * tile_bytes, xq + m0 * K, dx + at, xsum + at, row_scale, y + m0 * N,
                                   N, K, t * TILE)));
    }
}

}  // namespace tiles_avx2
#pragma GCC pop_options
#endif
