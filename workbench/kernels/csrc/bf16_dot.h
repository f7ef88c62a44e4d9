// bfloat16 weights times bfloat16 activations on AVX-512 BF16 dot products (vdpbf16ps).
//
// A bfloat16 model's activations are bfloat16 values, so its products need not widen every weight to
// float32 and multiply it on its own (two conversions and a multiply-add per weight): vdpbf16ps takes
// 32 weight/activation pairs and adds each lane's two products into a float32 accumulator. Products
// of two bfloat16 values are exact in float32 and each addition rounds to nearest, as a fused
// multiply-add does; what differs from the float kernel is the order (lane i sums inputs 2i and 2i+1
// of every 32). That order is the same for any number of rows of x, so a row's result never depends
// on the batch. The instruction reads inputs below float32's normal range as zero, far below anything
// a model computes.
//
// Included by matvec.cpp after vec.h; runs only where the CPU has AVX512_BF16 (bf16dot::available).

namespace bf16dot {

static bool available() {
#ifdef WB_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

#ifdef WB_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")

// Output rows [n0, n1) of y[m, n] = sum_k w[n, k] x[m, k] for M rows of bfloat16 x; one weight row at a
// time (one sequential stream per thread, as the float kernel at batch 1 and 2). Any K: the last
// partial chunk is loaded under a mask, its missing pairs zero.
template <int M>
static void rows(const uint16_t* w, const uint16_t* x, float* y, int64_t N, int64_t K, int64_t n0, int64_t n1) {
  const int64_t whole = K / 32 * 32;
  const __mmask32 tail = (__mmask32)((1ull << (K - whole)) - 1);
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* row = w + n * K;
    __m512 acc[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps();
    for (int64_t k = 0; k < whole; k += 32) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(row + k);
      for (int m = 0; m < M; ++m)
        acc[m] = _mm512_dpbf16_ps(acc[m], wv, (__m512bh)_mm512_loadu_si512(x + m * K + k));
    }
    if (tail) {
      const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(tail, row + whole);
      for (int m = 0; m < M; ++m)
        acc[m] = _mm512_dpbf16_ps(acc[m], wv, (__m512bh)_mm512_maskz_loadu_epi16(tail, x + m * K + whole));
    }
    for (int m = 0; m < M; ++m) y[m * N + n] = _mm512_reduce_add_ps(acc[m]);
  }
}

#pragma GCC pop_options

static void dense(const uint16_t* w, const uint16_t* x, float* y, int M_, int64_t N, int64_t K, int64_t n0,
                  int64_t n1) {
  WB_SWITCH_M(M_, (rows<M>(w, x, y, N, K, n0, n1)));
}
#endif

}  // namespace bf16dot
