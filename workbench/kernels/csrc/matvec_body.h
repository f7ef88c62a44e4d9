// Matrix-vector kernels y[m, n] = sum_k W[n, k] * x[m, k] for a few rows m of x (decode: M <= 4).
//
// Written once against a vector struct `V` (vec.h) and included by matvec.cpp inside a namespace per
// instruction set, so the same text compiles to AVX-512, AVX2 and scalar code. Every function takes
// a range of output rows [n0, n1): the caller splits the rows over threads. Weights are streamed
// once; a tile of R output rows shares each load of x, and R*M independent accumulators hide the
// latency of the fused multiply-adds. Activations stay float32; so does every accumulation.
//
// No #include here: vec.h is already included, and this file is meant to be included repeatedly.

// Hardware prefetchers lose track of the short rows of the small matrices (a 576-input int8 row is
// 9 cache lines), so each tile asks for the bytes of a later tile, about PREFETCH_BYTES ahead.
constexpr int64_t PREFETCH_BYTES = 8192;

struct RowPrefetch {
  const char* base;
  int64_t row_bytes, ahead, n1;  // ahead: whole tiles of R rows, fixed per call (no division per tile)

  RowPrefetch(const void* base_, int64_t row_bytes_, int64_t R, int64_t n1_)
      : base((const char*)base_), row_bytes(row_bytes_),
        ahead((PREFETCH_BYTES + R * row_bytes_ - 1) / (R * row_bytes_) * R), n1(n1_) {}

  // the rows of the tile `ahead` rows after n, which this thread reads later in this call
  void operator()(int64_t n, int64_t R) const { (*this)(base, n, R, row_bytes); }

  // the same rows of another stream with `bytes` per row (a quantized matrix's scales)
  void operator()(const void* stream, int64_t n, int64_t R, int64_t bytes) const {
    if (n + ahead + R > n1) return;
    const char* p = (const char*)stream + (n + ahead) * bytes;
    for (int64_t b = 0; b < R * bytes; b += 64) __builtin_prefetch(p + b, 0, 3);
  }
};

// Rows per tile: fewer when more rows of x need their own accumulators.
template <int M>
struct Tile {
  static constexpr int R = M == 1 ? 4 : (M == 2 ? 2 : 1);
};

// ---- float32, bfloat16 and int8 weights: one dot product per row (int8: times the row's scale) ----
template <typename T, int M, int R>
static inline void dense_tile(const T* w, const float* scale, const float* x, float* y, int64_t N, int64_t K,
                              int64_t n) {
  typename V::F acc[M][R];
  const T* row[R];
  for (int r = 0; r < R; ++r) {
    row[r] = w + (n + r) * K;
    for (int m = 0; m < M; ++m) acc[m][r] = V::zero();
  }
  int64_t k = 0;
  for (; k + V::W <= K; k += V::W) {
    typename V::F xv[M];
    for (int m = 0; m < M; ++m) xv[m] = V::load(x + m * K + k);
    for (int r = 0; r < R; ++r) {
      typename V::F wv = V::load_w(row[r] + k);
      for (int m = 0; m < M; ++m) acc[m][r] = V::fma(wv, xv[m], acc[m][r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int m = 0; m < M; ++m) {
      float s = V::sum(acc[m][r]);
      for (int64_t t = k; t < K; ++t) s += VecScalar::load_w(row[r] + t) * x[m * K + t];  // K % W leftovers
      y[m * N + n + r] = scale ? s * scale[n + r] : s;
    }
  }
}

// One or two rows of x (decode at batch 1 and 2) take one weight row at a time: the thread reads its
// rows front to back, one sequential stream that the hardware prefetcher follows, where tiles of 4 or
// 2 rows read interleaved streams and ask for later tiles themselves. Over a decode step's matrices
// (alternated, 2 threads, AMD EPYC) one row at a time was 1.14x (float32) and 1.26x (bfloat16) faster
// at batch 1, 1.28x and 1.08x at batch 2, about what a plain read of the same bytes takes; at 3 and
// 4 rows it made no difference. Each row's sum runs over k in the same order either way.
template <typename T, int M>
static void dense_rows(const T* w, const float* scale, const float* x, float* y, int64_t N, int64_t K,
                       int64_t n0, int64_t n1) {
  if (M <= 2) {
    for (int64_t n = n0; n < n1; ++n) dense_tile<T, M, 1>(w, scale, x, y, N, K, n);
    return;
  }
  constexpr int R = Tile<M>::R;
  const RowPrefetch prefetch(w, K * (int64_t)sizeof(T), R, n1);
  int64_t n = n0;
  for (; n + R <= n1; n += R) {
    prefetch(n, R);
    dense_tile<T, M, R>(w, scale, x, y, N, K, n);
  }
  for (; n < n1; ++n) dense_tile<T, M, 1>(w, scale, x, y, N, K, n);
}

// ---- 16 packed bytes (32 four-bit weights) against their 32 inputs, split into the inputs of the
// low nibbles `xl` and of the high nibbles `xh` (16 each) ----
template <int M, int R>
static inline void nibble_chunk(const uint8_t* const* bytes, const float* xl, const float* xh, int64_t ldx,
                                typename V::F (&acc)[M][R]) {
  for (int o = 0; o < 16; o += V::W) {
    typename V::F vl[M], vh[M];
    for (int m = 0; m < M; ++m) {
      vl[m] = V::load(xl + m * ldx + o);
      vh[m] = V::load(xh + m * ldx + o);
    }
    for (int r = 0; r < R; ++r) {
      typename V::F lo, hi;
      V::nibbles(bytes[r] + o, lo, hi);
      for (int m = 0; m < M; ++m) acc[m][r] = V::fma(hi, vh[m], V::fma(lo, vl[m], acc[m][r]));
    }
  }
}

// sum_g scale_g * zero_g * xs_g over one row's groups (zero points are 4-bit: the low nibble).
static inline float zero_term(const float* scale, const uint8_t* zero, const float* xs, int64_t groups) {
  typename V::F acc = V::zero(), z, unused;
  int64_t g = 0;
  for (; g + V::W <= groups; g += V::W) {
    V::nibbles(zero + g, z, unused);
    acc = V::fma(V::load(scale + g), V::fma(z, V::load(xs + g), V::zero()), acc);
  }
  float out = V::sum(acc);
  for (; g < groups; ++g) out += scale[g] * (float)zero[g] * xs[g];
  return out;
}

// ---- int4 group-wise asymmetric (Int4WeightOnlyLinear): w = (q - zero) * scale per group of G ----
// sum_k w_k x_k = scale * (sum_k q_k x_k - zero * sum_k x_k), so only q is converted per weight; the
// caller passes xr (x padded to Kp and, per group, each full 32-input chunk reordered as its 16 even
// inputs then its 16 odd ones, matching low/high nibbles) and xs (x summed per group).
template <int M, int R>
static inline void int4_tile(const uint8_t* packed, const float* scale, const uint8_t* zero, const float* xr,
                             const float* xs, float* y, int64_t N, int64_t Kp, int64_t G, int64_t n) {
  const int64_t groups = Kp / G, row_bytes = Kp / 2;
  typename V::F acc[M][R];
  float extra[M][R];
  const uint8_t* row[R];
  for (int r = 0; r < R; ++r) {
    row[r] = packed + (n + r) * row_bytes;
    for (int m = 0; m < M; ++m) acc[m][r] = V::zero(), extra[m][r] = 0.0f;
  }
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t base = g * G;
    typename V::F gacc[M][R];
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m) gacc[m][r] = V::zero();
    int64_t j = 0;
    for (; j + 32 <= G; j += 32) {
      const uint8_t* bytes[R];
      for (int r = 0; r < R; ++r) bytes[r] = row[r] + (base + j) / 2;
      nibble_chunk<M, R>(bytes, xr + base + j, xr + base + j + 16, Kp, gacc);
    }
    for (int r = 0; r < R; ++r) {
      const float s = scale[(n + r) * groups + g];
      for (int m = 0; m < M; ++m) {
        acc[m][r] = V::fma(gacc[m][r], V::set1(s), acc[m][r]);
        for (int64_t t = j; t < G; t += 2) {  // a group size that is not a multiple of 32: natural order here
          const uint8_t b = row[r][(base + t) / 2];
          extra[m][r] += s * ((float)(b & 15) * xr[m * Kp + base + t] + (float)(b >> 4) * xr[m * Kp + base + t + 1]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m)
      y[m * N + n + r] = V::sum(acc[m][r]) + extra[m][r] -
                         zero_term(scale + (n + r) * groups, zero + (n + r) * groups, xs + m * groups, groups);
}

template <int M>
static void int4_rows(const uint8_t* packed, const float* scale, const uint8_t* zero, const float* xr,
                      const float* xs, float* y, int64_t N, int64_t Kp, int64_t G, int64_t n0, int64_t n1) {
  constexpr int R = Tile<M>::R;
  const RowPrefetch prefetch(packed, Kp / 2, R, n1);
  int64_t n = n0;
  for (; n + R <= n1; n += R) {
    prefetch(n, R);
    int4_tile<M, R>(packed, scale, zero, xr, xs, y, N, Kp, G, n);
  }
  for (; n < n1; ++n) int4_tile<M, 1>(packed, scale, zero, xr, xs, y, N, Kp, G, n);
}

// ---- GGUF blocks of 32 weights (formats/gguf_blocks.py): Q8_0, Q4_0, Q4_1 ----
// Q8_0: d * q.  Q4_0: d * (q - 8).  Q4_1: d * q + m.  Byte j of a 4-bit block holds weight j (low
// nibble) and weight j + 16 (high), so x needs no reordering; xs holds x summed per block.
enum GGUFType { Q8_0 = 0, Q4_0 = 1, Q4_1 = 2 };

template <int TYPE, int M, int R>
static inline void gguf_tile(const uint8_t* raw, const float* x, const float* xs, float* y, int64_t N, int64_t K,
                             int64_t n) {
  constexpr int64_t block_bytes = TYPE == Q8_0 ? 34 : (TYPE == Q4_0 ? 18 : 20);
  const int64_t blocks = K / 32;
  typename V::F acc[M][R];
  float extra[M][R];
  const uint8_t* row[R];
  for (int r = 0; r < R; ++r) {
    row[r] = raw + (n + r) * blocks * block_bytes;
    for (int m = 0; m < M; ++m) acc[m][r] = V::zero(), extra[m][r] = 0.0f;
  }
  for (int64_t b = 0; b < blocks; ++b) {
    typename V::F gacc[M][R];
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m) gacc[m][r] = V::zero();
    const uint8_t* blk[R];
    for (int r = 0; r < R; ++r) blk[r] = row[r] + b * block_bytes;
    if (TYPE == Q8_0) {
      for (int o = 0; o < 32; o += V::W) {
        typename V::F xv[M];
        for (int m = 0; m < M; ++m) xv[m] = V::load(x + m * K + b * 32 + o);
        for (int r = 0; r < R; ++r) {
          typename V::F wv = V::load_w((const int8_t*)(blk[r] + 2 + o));
          for (int m = 0; m < M; ++m) gacc[m][r] = V::fma(wv, xv[m], gacc[m][r]);
        }
      }
    } else {
      const uint8_t* bytes[R];
      for (int r = 0; r < R; ++r) bytes[r] = blk[r] + (TYPE == Q4_0 ? 2 : 4);
      nibble_chunk<M, R>(bytes, x + b * 32, x + b * 32 + 16, K, gacc);
    }
    for (int r = 0; r < R; ++r) {
      const float d = V::half(load_u16(blk[r]));
      for (int m = 0; m < M; ++m) {
        acc[m][r] = V::fma(gacc[m][r], V::set1(d), acc[m][r]);
        if (TYPE == Q4_0) extra[m][r] -= 8.0f * d * xs[m * blocks + b];
        if (TYPE == Q4_1) extra[m][r] += V::half(load_u16(blk[r] + 2)) * xs[m * blocks + b];
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) y[m * N + n + r] = V::sum(acc[m][r]) + extra[m][r];
}

template <int TYPE, int M>
static void gguf_rows(const uint8_t* raw, const float* x, const float* xs, float* y, int64_t N, int64_t K,
                      int64_t n0, int64_t n1) {
  constexpr int R = Tile<M>::R;
  int64_t n = n0;
  constexpr int64_t block_bytes = TYPE == Q8_0 ? 34 : (TYPE == Q4_0 ? 18 : 20);
  const RowPrefetch prefetch(raw, K / 32 * block_bytes, R, n1);
  for (; n + R <= n1; n += R) {
    prefetch(n, R);
    gguf_tile<TYPE, M, R>(raw, x, xs, y, N, K, n);
  }
  for (; n < n1; ++n) gguf_tile<TYPE, M, 1>(raw, x, xs, y, N, K, n);
}

// ---- entry points with M (1..4) chosen at run time ----
#define WB_SWITCH_M(M_VALUE, CALL) \
  switch (M_VALUE) {               \
    case 1: { constexpr int M = 1; CALL; break; } \
    case 2: { constexpr int M = 2; CALL; break; } \
    case 3: { constexpr int M = 3; CALL; break; } \
    default: { constexpr int M = 4; CALL; break; } \
  }

template <typename T>
static void dense(const T* w, const float* scale, const float* x, float* y, int M_, int64_t N, int64_t K,
                  int64_t n0, int64_t n1) {
  WB_SWITCH_M(M_, (dense_rows<T, M>(w, scale, x, y, N, K, n0, n1)));
}

static void int4(const uint8_t* packed, const float* scale, const uint8_t* zero, const float* xr, const float* xs,
                 float* y, int M_, int64_t N, int64_t Kp, int64_t G, int64_t n0, int64_t n1) {
  WB_SWITCH_M(M_, (int4_rows<M>(packed, scale, zero, xr, xs, y, N, Kp, G, n0, n1)));
}

static void gguf(int type, const uint8_t* raw, const float* x, const float* xs, float* y, int M_, int64_t N,
                 int64_t K, int64_t n0, int64_t n1) {
  if (type == Q8_0) WB_SWITCH_M(M_, (gguf_rows<Q8_0, M>(raw, x, xs, y, N, K, n0, n1)))
  else if (type == Q4_0) WB_SWITCH_M(M_, (gguf_rows<Q4_0, M>(raw, x, xs, y, N, K, n0, n1)))
  else WB_SWITCH_M(M_, (gguf_rows<Q4_1, M>(raw, x, xs, y, N, K, n0, n1)))
}

// ---- a streaming read of n floats: what the kernels above could reach if arithmetic were free ----
// Four independent accumulators keep several loads in flight; the sum is returned so that the
// compiler cannot drop the reads.
static float read_sum(const float* p, int64_t n) {
  const typename V::F one = V::set1(1.0f);
  typename V::F a0 = V::zero(), a1 = V::zero(), a2 = V::zero(), a3 = V::zero();
  int64_t i = 0;
  for (; i + 4 * V::W <= n; i += 4 * V::W) {
    a0 = V::fma(V::load(p + i), one, a0);
    a1 = V::fma(V::load(p + i + V::W), one, a1);
    a2 = V::fma(V::load(p + i + 2 * V::W), one, a2);
    a3 = V::fma(V::load(p + i + 3 * V::W), one, a3);
  }
  float s = V::sum(a0) + V::sum(a1) + V::sum(a2) + V::sum(a3);
  for (; i < n; ++i) s += p[i];
  return s;
}
