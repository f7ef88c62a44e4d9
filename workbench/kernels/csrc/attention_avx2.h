// The chunk kernel of attention.h for AVX2 CPUs: the same chunks of 64 positions, the same
// per-chunk maximum, sum and weighted values and the same drivers, 8 lanes wide. Results agree with
// the AVX-512 kernel to float32 rounding, not bit for bit (sums of 8 lanes, not 16); a prompt and
// its decode steps still compute every query alike on one CPU.

#ifdef WB_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")  // as VecAVX2, so its loads inline
namespace attn256 {

using attn::CHUNK;
using attn::MAX_GROUP;

// e^x for x <= 0, as attn512::exp_neg (x = n ln2 + r, a degree-7 polynomial in r) with 2^n built from
// its exponent bits. x is clamped at -87 so 2^n stays a normal float: e^-87 is 1.6e-38, which adds
// nothing to a chunk's sum, whose largest term is 1.
static inline __m256 exp_neg(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);  // ln2, split for exactness
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860682030941723e-6f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040);
  const float c[] = {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
  for (float ci : c) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(ci));
  const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(two_n));
}

// Lane i of the result is the sum of the lanes of a[i]: 8 dot products' horizontal sums in 6 hadds,
// 2 permutes and an add.
static inline __m256 sum_lanes8(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);  // halves: a0..a3 | a4..a7, per 128 bits
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// Scores q . k[j] * scale of `count` (<= 8) positions from `kr` (stride ks) into p[0..8) (zeros past count).
template <typename T, int VECS>
static inline void scores8(const T* q, const T* kr, int64_t ks, int count, float scale, float* p) {
  __m256 acc[8];
  for (int j = 0; j < 8; ++j) {
    if (j >= count) {
      acc[j] = _mm256_setzero_ps();
      continue;
    }
    const T* row = kr + j * ks;
    acc[j] = _mm256_mul_ps(VecAVX2::load_w(q), VecAVX2::load_w(row));
    for (int i = 1; i < VECS; ++i) acc[j] = _mm256_fmadd_ps(VecAVX2::load_w(q + 8 * i), VecAVX2::load_w(row + 8 * i), acc[j]);
  }
  _mm256_storeu_ps(p, _mm256_mul_ps(sum_lanes8(acc), _mm256_set1_ps(scale)));
}

// o[g] += sum over the chunk's n positions of p[g][j] * v[j], for GB query heads at once (each value
// row loaded once for them). Positions are added in order.
template <typename T, int VECS, int GB>
static inline void weigh_values(const float (*p)[CHUNK + 8], const T* v, int64_t ks, int64_t n, float* o_out) {
  __m256 o[GB][VECS];
  for (int g = 0; g < GB; ++g)
    for (int i = 0; i < VECS; ++i) o[g][i] = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const T* vr = v + j * ks;
    for (int i = 0; i < VECS; ++i) {
      const __m256 row = VecAVX2::load_w(vr + 8 * i);
      for (int g = 0; g < GB; ++g) o[g][i] = _mm256_fmadd_ps(_mm256_set1_ps(p[g][j]), row, o[g][i]);
    }
  }
  for (int g = 0; g < GB; ++g)
    for (int i = 0; i < VECS; ++i) _mm256_storeu_ps(o_out + g * 8 * VECS + 8 * i, o[g][i]);
}

// One chunk [s0, s1) of one KV head for its G query heads (see attn512::chunk); VECS = hd / 8.
template <typename T, int VECS>
static void chunk(const T* const* q, const T* k, const T* v, int64_t ks, const bool* mask, int64_t ms,
                  int G, float scale, int64_t s0, int64_t s1, float* m_out, float* l_out, float* o_out) {
  constexpr int64_t hd = 8 * VECS;
  constexpr int GB = VECS <= 4 ? 2 : 1;  // query heads per pass over the values (16 registers)
  const int64_t n = s1 - s0, padded = (n + 7) / 8 * 8;
  alignas(32) float p[MAX_GROUP][CHUNK + 8];
  for (int g = 0; g < G; ++g) {  // scores, then exp(score - max)
    for (int64_t j = 0; j < n; j += 8)
      scores8<T, VECS>(q[g], k + (s0 + j) * ks, ks, (int)std::min<int64_t>(8, n - j), scale, p[g] + j);
    if (mask)
      for (int64_t j = 0; j < n; ++j)
        if (!mask[(s0 + j) * ms]) p[g][j] = -INFINITY;
    float m = -INFINITY;
    for (int64_t j = 0; j < n; ++j) m = std::max(m, p[g][j]);
    float l = 0.0f;
    if (m != -INFINITY) {
      for (int64_t j = n; j < padded; ++j) p[g][j] = -INFINITY;  // the last group of 8: no position there
      const __m256 vm = _mm256_set1_ps(m), none = _mm256_set1_ps(-INFINITY);
      __m256 sum = _mm256_setzero_ps();
      for (int64_t j = 0; j < padded; j += 8) {
        const __m256 sc = _mm256_loadu_ps(p[g] + j);
        const __m256 e = _mm256_and_ps(_mm256_cmp_ps(sc, none, _CMP_NEQ_OQ), exp_neg(_mm256_sub_ps(sc, vm)));
        _mm256_storeu_ps(p[g] + j, e);
        sum = _mm256_add_ps(sum, e);
      }
      l = VecAVX2::sum(sum);
    } else {
      std::fill(p[g], p[g] + n, 0.0f);
    }
    m_out[g] = m, l_out[g] = l;
  }
  const T* vc = v + s0 * ks;
  for (int g = 0; g < G; g += GB) {
    float* og = o_out + g * hd;
    if (GB == 2 && g + 1 < G) weigh_values<T, VECS, GB>(p + g, vc, ks, n, og);
    else weigh_values<T, VECS, 1>(p + g, vc, ks, n, og);
  }
  for (int g = 0; g < G; ++g)  // every position masked: nothing added (zeros, even where a value is not finite)
    if (m_out[g] == -INFINITY) std::fill(o_out + g * hd, o_out + (g + 1) * hd, 0.0f);
}

// The chunk kernel the drivers of attention.h take as a template argument.
struct Kernel {
  template <typename T>
  static void chunk(const T* const* qg, const T* k, const T* v, int64_t ks, const bool* mrow, int64_t ms, int G,
                    float scale, int64_t s0, int64_t s1, float* mt, float* lt, float* ot, int64_t hd) {
    switch (hd) {
      case 32: attn256::chunk<T, 4>(qg, k, v, ks, mrow, ms, G, scale, s0, s1, mt, lt, ot); break;
      case 64: attn256::chunk<T, 8>(qg, k, v, ks, mrow, ms, G, scale, s0, s1, mt, lt, ot); break;
      default: attn256::chunk<T, 16>(qg, k, v, ks, mrow, ms, G, scale, s0, s1, mt, lt, ot); break;
    }
  }
};

}  // namespace attn256
#pragma GCC pop_options
#endif
