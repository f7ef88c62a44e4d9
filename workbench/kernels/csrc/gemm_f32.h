// y = x @ w.T in float32 for many rows of x (a prompt), on AVX-512: the product the matrix-vector
// kernels cannot make fast, since they read each weight once per 4 rows.
//
// The usual register-blocked GEMM. A panel of 32 output columns is packed k-major (P[k][0..31] =
// w[n0..n0+31][k]), so one k step is two 16-lane loads of weights; 12 rows of x then broadcast their
// k-th input into 24 fused multiply-adds, all 24 sums staying in registers for the whole of K.
// Each y[m][n] is summed over k in order, whatever the number of rows: a row's result does not
// depend on the prompt around it.

#ifdef WB_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
namespace gemm_f32 {

constexpr int64_t PANEL = 32, ROWS = 12;

// P[k][j] = w[n0 + j][k] for j < cols (<= 32), zero past them.
static void pack_panel(const float* w, int64_t K, int64_t n0, int64_t cols, float* P) {
  if (cols < PANEL) std::memset(P, 0, sizeof(float) * PANEL * K);
  for (int64_t j = 0; j < cols; ++j) {
    const float* row = w + (n0 + j) * K;
    for (int64_t k = 0; k < K; ++k) P[k * PANEL + j] = row[k];
  }
}

// Rows x[0..R) (row stride K) against a packed panel: y[r][0..cols), row stride N.
template <int R>
static inline void panel_rows(const float* P, const float* x, float* y, int64_t K, int64_t N, int64_t cols) {
  __m512 a0[R], a1[R];
  for (int r = 0; r < R; ++r) a0[r] = _mm512_setzero_ps(), a1[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m512 w0 = _mm512_load_ps(P + k * PANEL), w1 = _mm512_load_ps(P + k * PANEL + 16);
    for (int r = 0; r < R; ++r) {
      const __m512 xb = _mm512_set1_ps(x[r * K + k]);
      a0[r] = _mm512_fmadd_ps(xb, w0, a0[r]);
      a1[r] = _mm512_fmadd_ps(xb, w1, a1[r]);
    }
  }
  const __mmask16 m0 = cols >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << cols) - 1);
  const __mmask16 m1 = cols >= 32 ? (__mmask16)0xFFFF : cols <= 16 ? (__mmask16)0 : (__mmask16)((1u << (cols - 16)) - 1);
  for (int r = 0; r < R; ++r) {
    _mm512_mask_storeu_ps(y + r * N, m0, a0[r]);
    _mm512_mask_storeu_ps(y + r * N + 16, m1, a1[r]);
  }
}

static void panel(const float* P, const float* x, float* y, int64_t rows, int64_t K, int64_t N, int64_t cols) {
  int64_t m = 0;
  for (; m + ROWS <= rows; m += ROWS) panel_rows<ROWS>(P, x + m * K, y + m * N, K, N, cols);
  switch (rows - m) {
#define WB_TAIL(R) case R: return panel_rows<R>(P, x + m * K, y + m * N, K, N, cols);
    WB_TAIL(1) WB_TAIL(2) WB_TAIL(3) WB_TAIL(4) WB_TAIL(5) WB_TAIL(6)
    WB_TAIL(7) WB_TAIL(8) WB_TAIL(9) WB_TAIL(10) WB_TAIL(11)
#undef WB_TAIL
    default: return;
  }
}

// Panels [p0, p1) of y (rows x N) = x (rows x K) @ w.T. P holds (p1 - p0) packed panels (64-byte
// aligned): each is packed once, then rows go in blocks of 192 (x's block stays in L2 while the
// panels pass over it).
static void panels(const float* w, const float* x, float* y, int64_t rows, int64_t N, int64_t K, int64_t p0,
                   int64_t p1, float* P) {
  for (int64_t p = p0; p < p1; ++p) pack_panel(w, K, p * PANEL, std::min<int64_t>(PANEL, N - p * PANEL), P + (p - p0) * PANEL * K);
  for (int64_t m0 = 0; m0 < rows; m0 += 192)
    for (int64_t p = p0; p < p1; ++p)
      panel(P + (p - p0) * PANEL * K, x + m0 * K, y + m0 * N + p * PANEL, std::min<int64_t>(192, rows - m0), K, N,
            std::min<int64_t>(PANEL, N - p * PANEL));
}

}  // namespace gemm_f32
#pragma GCC pop_options
#endif
