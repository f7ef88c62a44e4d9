// Decode attention: one new query per sequence over its cached keys and values (AVX-512 here, AVX2 in
// attention_avx2.h; both chunk kernels share the drivers at the end of this file).
//
// At decode time attention reads the whole KV cache once per step, like a matrix-vector product;
// with a 512-token context it costs as much as a third of the weights' products, and PyTorch's
// scaled_dot_product_attention spends ~17 us per call before reading anything. Here the query
// heads that share a KV head are served by one pass over its keys and values (grouped-query
// attention reads K/V once), and the positions are split into chunks that threads take in turn.
// Each chunk keeps its own softmax maximum, sum and weighted values, merged at the end (the
// online-softmax rule: rescale each part by exp(its max - the overall max)).
//
// Shapes (strides in elements, the last axis contiguous): q (B, H, 1, hd), k and v (B, KVH, S, hd),
// float32 or bfloat16 (T = uint16_t, widened in registers by vec.h's loads; sums in float32), mask (B or 1, 1, 1, S)
// bool or none, out (B, 1, H * hd) float32. H is a multiple of KVH (at most 16 query
// heads per KV head); hd is 32, 64 or 128 (`fits`).

namespace attn {

constexpr int64_t CHUNK = 64, MAX_GROUP = 16;  // positions per chunk, query heads per KV head

struct Strides {
  int64_t b, h, s;
};

// Head sizes with a compiled chunk (the caller falls back to PyTorch for others).
static inline bool fits(int64_t hd, int64_t groups) {
  return (hd == 32 || hd == 64 || hd == 128) && groups >= 1 && groups <= MAX_GROUP;
}

}  // namespace attn

#ifdef WB_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")  // as VecAVX512, so its loads inline
namespace attn512 {

using attn::CHUNK;
using attn::MAX_GROUP;

// e^x for x <= 0 (scores minus their maximum): x = n ln2 + r with |r| <= ln2 / 2, a degree-7 Taylor
// polynomial in r (relative error below 1e-7), times 2^n with scalef.
static inline __m512 exp_neg(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));  // e^-104 is below float's smallest subnormal
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln2, split for exactness
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  const float c[] = {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
  for (float ci : c) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(ci));
  return _mm512_scalef_ps(p, n);
}

// Lane i of the result is the sum of the lanes of a[i]: 16 dot products' horizontal sums in 30
// shuffles and adds, where one `_mm512_reduce_add_ps` per product costs about 8 dependent steps.
// Each sum adds lane l to l + 8, then l + 4, l + 2 and l + 1, as reduce_add does.
static inline __m512 sum_lanes16(const __m512* a) {
  __m512 b[8], c[4], d[2];
  for (int i = 0; i < 8; ++i)  // quarters: [a0 (q0+q2), a0 (q1+q3), a1 (q0+q2), a1 (q1+q3)]
    b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  for (int i = 0; i < 4; ++i)  // quarter k: 4 partial sums of a[4i + k]
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  for (int i = 0; i < 2; ++i)  // quarter k: 2 partial sums each of a[8i + k] and a[8i + 4 + k]
    d[i] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * i], c[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(c[2 * i], c[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 e = _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1)));
  // lane 4k + m now holds the sum of a[4m + k]: transpose the 4 x 4 back
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, e);
}

// Scores q . k[j] * scale of `count` (<= 16) positions from `kr` (stride ks) into p.
template <typename T, int VECS>
static inline void scores16(const __m512* qv, const T* kr, int64_t ks, int count, float scale, float* p) {
  __m512 acc[16];
  for (int j = 0; j < 16; ++j) {
    if (j >= count) {
      acc[j] = _mm512_setzero_ps();
      continue;
    }
    const T* row = kr + j * ks;
    acc[j] = _mm512_mul_ps(qv[0], VecAVX512::load_w(row));
    for (int i = 1; i < VECS; ++i) acc[j] = _mm512_fmadd_ps(qv[i], VecAVX512::load_w(row + 16 * i), acc[j]);
  }
  const __mmask16 live = (__mmask16)(count >= 16 ? 0xFFFF : (1u << count) - 1);
  _mm512_mask_storeu_ps(p, live, _mm512_mul_ps(sum_lanes16(acc), _mm512_set1_ps(scale)));
}

// o[g] += sum over the chunk's n positions of p[g][j] * v[j], for GB query heads at once: each value
// row is loaded once for all of them, and GB x VECS independent sums keep the FMA units busy where one
// head's VECS sums would wait on each other's latency. Positions are added in order.
template <typename T, int VECS, int GB>
static inline void weigh_values(const float (*p)[CHUNK], const T* v, int64_t ks, int64_t n, float* o_out) {
  __m512 o[GB][VECS];
  for (int g = 0; g < GB; ++g)
    for (int i = 0; i < VECS; ++i) o[g][i] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const T* vr = v + j * ks;
    __m512 row[VECS];
    for (int i = 0; i < VECS; ++i) row[i] = VecAVX512::load_w(vr + 16 * i);
    for (int g = 0; g < GB; ++g) {
      const __m512 w = _mm512_set1_ps(p[g][j]);
      for (int i = 0; i < VECS; ++i) o[g][i] = _mm512_fmadd_ps(w, row[i], o[g][i]);
    }
  }
  for (int g = 0; g < GB; ++g)
    for (int i = 0; i < VECS; ++i) _mm512_storeu_ps(o_out + g * 16 * VECS + 16 * i, o[g][i]);
}

// One chunk [s0, s1) of one KV head for its G query heads: the chunk's max score, sum of
// exp(score - max) and exp-weighted sum of values, per query head. VECS = hd / 16 is a template
// argument so that queries and output rows stay in registers; the chunk's K and V rows (16 KB
// each at hd 64) stay in L1 while the query heads take their turns.
template <typename T, int VECS>
static void chunk(const T* const* q, const T* k, const T* v, int64_t ks, const bool* mask, int64_t ms,
                  int G, float scale, int64_t s0, int64_t s1, float* m_out, float* l_out, float* o_out) {
  constexpr int64_t hd = 16 * VECS;
  constexpr int GB = VECS <= 4 ? 4 : 2;  // query heads per pass over the values (registers: GB x VECS sums)
  const int64_t n = s1 - s0;
  alignas(64) float p[MAX_GROUP][CHUNK];
  for (int g = 0; g < G; ++g) {  // scores, then exp(score - max)
    __m512 qv[VECS];
    for (int i = 0; i < VECS; ++i) qv[i] = VecAVX512::load_w(q[g] + 16 * i);
    for (int64_t j = 0; j < n; j += 16)
      scores16<T, VECS>(qv, k + (s0 + j) * ks, ks, (int)std::min<int64_t>(16, n - j), scale, p[g] + j);
    if (mask)
      for (int64_t j = 0; j < n; ++j)
        if (!mask[(s0 + j) * ms]) p[g][j] = -INFINITY;
    float m = -INFINITY;
    for (int64_t j = 0; j < n; ++j) m = std::max(m, p[g][j]);
    float l = 0.0f;
    if (m != -INFINITY) {
      const __m512 vm = _mm512_set1_ps(m);
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 live = (__mmask16)(n - j >= 16 ? 0xFFFF : (1u << (n - j)) - 1);
        const __m512 sc = _mm512_maskz_loadu_ps(live, p[g] + j);
        const __mmask16 keep = _mm512_mask_cmp_ps_mask(live, sc, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
        const __m512 e = _mm512_maskz_mov_ps(keep, exp_neg(_mm512_sub_ps(sc, vm)));
        _mm512_mask_storeu_ps(p[g] + j, live, e);
        sum = _mm512_add_ps(sum, e);
      }
      l = _mm512_reduce_add_ps(sum);
    } else {
      std::fill(p[g], p[g] + n, 0.0f);
    }
    m_out[g] = m, l_out[g] = l;
  }
  const T* vc = v + s0 * ks;
  for (int g = 0; g < G; g += GB) {
    const int count = std::min(GB, G - g);
    float* og = o_out + g * hd;
    if (count == GB) weigh_values<T, VECS, GB>(p + g, vc, ks, n, og);
    else if (count == 1) weigh_values<T, VECS, 1>(p + g, vc, ks, n, og);
    else if (count == 2) weigh_values<T, VECS, 2>(p + g, vc, ks, n, og);
    else weigh_values<T, VECS, 3>(p + g, vc, ks, n, og);
  }
  for (int g = 0; g < G; ++g)  // every position masked: nothing added (zeros, even where a value is not finite)
    if (m_out[g] == -INFINITY) std::fill(o_out + g * hd, o_out + (g + 1) * hd, 0.0f);
}


template <typename T>
static inline void chunk_hd(const T* const* qg, const T* k, const T* v, int64_t ks, const bool* mrow, int64_t ms,
                            int G, float scale, int64_t s0, int64_t s1, float* mt, float* lt, float* ot, int64_t hd) {
  switch (hd) {
    case 32: chunk<T, 2>(qg, k, v, ks, mrow, ms, G, scale, s0, s1, mt, lt, ot); break;
    case 64: chunk<T, 4>(qg, k, v, ks, mrow, ms, G, scale, s0, s1, mt, lt, ot); break;
    default: chunk<T, 8>(qg, k, v, ks, mrow, ms, G, scale, s0, s1, mt, lt, ot); break;
  }
}


// The chunk kernel the drivers below take as a template argument.
struct Kernel {
  template <typename T>
  static void chunk(const T* const* qg, const T* k, const T* v, int64_t ks, const bool* mrow, int64_t ms, int G,
                    float scale, int64_t s0, int64_t s1, float* mt, float* lt, float* ot, int64_t hd) {
    chunk_hd(qg, k, v, ks, mrow, ms, G, scale, s0, s1, mt, lt, ot, hd);
  }
};

}  // namespace attn512
#pragma GCC pop_options
#endif

// ---- the drivers, the same for every chunk kernel (attn512::Kernel, attn256::Kernel) ----
// Compiled for AVX2 and FMA, the least a chunk kernel runs on, so that the merge's products and sums
// round as they did inside the AVX-512 kernel (contracted to fused multiply-adds).
#ifdef WB_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace attn {

// One query head's output from its chunks' (max, sum, weighted values), m[c * G], l[c * G] and
// o[(c * G) * hd] for c < chunks (pointers already at query head g): the online-softmax merge.
static void merge(const float* m, const float* l, const float* o, int64_t chunks, int G, int64_t hd, float* y) {
  float mx = -INFINITY, total = 0.0f;
  for (int64_t c = 0; c < chunks; ++c) mx = std::max(mx, m[c * G]);
  std::fill(y, y + hd, 0.0f);
  for (int64_t c = 0; c < chunks; ++c) {
    if (l[c * G] == 0.0f) continue;
    const float w = std::exp(m[c * G] - mx);
    total += w * l[c * G];
    for (int64_t i = 0; i < hd; ++i) y[i] += w * o[c * G * hd + i];
  }
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;  // no visible key: zeros, as PyTorch gives
  for (int64_t i = 0; i < hd; ++i) y[i] *= inv;
}

template <class Kernel, typename T>
static void decode(const T* q, Strides qs, const T* k, const T* v, Strides kvs, const bool* mask,
                   int64_t mb, int64_t ms, float* out, int64_t B, int64_t H, int64_t KVH, int64_t S, int64_t hd,
                   float scale) {
  const int G = (int)(H / KVH);
  const int64_t chunks = (S + CHUNK - 1) / CHUNK, tasks = B * KVH * chunks;
  std::vector<float> m(tasks * G), l(tasks * G), o(tasks * G * hd);
  const bool parallel = S * KVH * B >= 256 && !omp_in_parallel();
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t b = t / (KVH * chunks), h = t / chunks % KVH, c = t % chunks;
    const T* qg[MAX_GROUP];
    for (int g = 0; g < G; ++g) qg[g] = q + b * qs.b + (h * G + g) * qs.h;
    const int64_t head = b * kvs.b + h * kvs.h;
    const bool* mrow = mask ? mask + b * mb : nullptr;
    const int64_t s0 = c * CHUNK, s1 = std::min(S, s0 + CHUNK);
    Kernel::chunk(qg, k + head, v + head, kvs.s, mrow, ms, G, scale, s0, s1, &m[t * G], &l[t * G], &o[t * G * hd], hd);
  }
  for (int64_t b = 0; b < B; ++b)  // merge the chunks of each query head
    for (int64_t h = 0; h < KVH; ++h)
      for (int g = 0; g < G; ++g) {
        const int64_t first = (b * KVH + h) * chunks;
        merge(&m[first * G + g], &l[first * G + g], &o[(first * G + g) * hd], chunks, G, hd,
              out + b * H * hd + (h * G + g) * hd);
      }
}

// Tq queries per sequence at positions start .. start + Tq - 1 (q strides qs.b, qs.h and qt per
// query), query i over keys [0, start + i + 1) and its mask row (mask + b * mb + i * mt, where given):
// each query computed exactly as `decode` computes it alone at that position (the same chunks of
// 64 positions, the same merge), so a prompt's attention is its decode steps' bit for bit.
// out: (B, Tq, H * hd) float32.
template <class Kernel, typename T>
static void prefill(const T* q, Strides qs, int64_t qt, const T* k, const T* v, Strides kvs, const bool* mask,
                    int64_t mb, int64_t mt, int64_t ms, float* out, int64_t B, int64_t H, int64_t KVH, int64_t Tq,
                    int64_t start, int64_t hd, float scale) {
  const int G = (int)(H / KVH);
  const int64_t tasks = B * KVH * Tq, max_chunks = (start + Tq + CHUNK - 1) / CHUNK;
#pragma omp parallel if (!omp_in_parallel())
  {
    std::vector<float> m(max_chunks * G), l(max_chunks * G), o(max_chunks * G * hd);
#pragma omp for schedule(dynamic, 4)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t b = t / (KVH * Tq), h = t / Tq % KVH, i = t % Tq, S = start + i + 1;
      const int64_t chunks = (S + CHUNK - 1) / CHUNK, head = b * kvs.b + h * kvs.h;
      const T* qg[MAX_GROUP];
      for (int g = 0; g < G; ++g) qg[g] = q + b * qs.b + (h * G + g) * qs.h + i * qt;
      const bool* mrow = mask ? mask + b * mb + i * mt : nullptr;
      for (int64_t c = 0; c < chunks; ++c)
        Kernel::chunk(qg, k + head, v + head, kvs.s, mrow, ms, G, scale, c * CHUNK, std::min(S, c * CHUNK + CHUNK),
                 &m[c * G], &l[c * G], &o[c * G * hd], hd);
      for (int g = 0; g < G; ++g)
        merge(&m[g], &l[g], &o[g * hd], chunks, G, hd, out + (b * Tq + i) * H * hd + (h * G + g) * hd);
    }
  }
}

}  // namespace attn
#pragma GCC pop_options
#endif
