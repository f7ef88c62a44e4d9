// Python bindings of the decode matrix-vector kernels (matvec_body.h) and the run-time choice of
// instruction set. Built on first use by workbench/kernels/build.py with torch.utils.cpp_extension.
#include <omp.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "vec.h"

namespace scalar {
using V = VecScalar;
#include "matvec_body.h"
}  // namespace scalar

#ifdef WB_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
using V = VecAVX2;
#include "matvec_body.h"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
namespace avx512 {
using V = VecAVX512;
#include "matvec_body.h"
}  // namespace avx512
#pragma GCC pop_options
#endif

#include "int4_q8.h"
#include "tiles.h"
#include "gguf_q8.h"
#include "tiles_avx2.h"
#include "attention.h"
#include "attention_avx2.h"
#include "gemm_f32.h"
#include "bf16_dot.h"

enum Backend { SCALAR = 0, AVX2 = 1, AVX512 = 2 };
static const char* BACKEND_NAMES[] = {"scalar", "avx2", "avx512"};

static std::vector<std::string> supported_backends() {
  std::vector<std::string> out = {"scalar"};
#ifdef WB_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) out.push_back("avx2");
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    out.push_back("avx512");
#endif
  return out;
}

// AVX-512 VNNI (integer dot products of bytes): the int4 x int8 kernel's fast path.
static bool has_vnni() {
#ifdef WB_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

static int best_backend() {
  const std::string best = supported_backends().back();
  for (int b = 0; b < 3; ++b)
    if (best == BACKEND_NAMES[b]) return b;
  return SCALAR;
}

static int g_backend = best_backend();
static const bool has_vnni_cached = has_vnni();

static std::string get_backend() { return BACKEND_NAMES[g_backend]; }

// Whether the int8-activation kernels run on AVX-512 VNNI here (gguf_q8.h, int4_q8.h).
static bool vnni_runs() {
#ifdef WB_X86
  return g_backend == AVX512 && has_vnni_cached;
#else
  return false;
#endif
}

// Whether weight tiles and tiles_q8 run here: on VNNI, else on AVX2 (tiles_avx2.h), with the same results.
static bool tiles_fit() {
#ifdef WB_X86
  return g_backend >= AVX2;
#else
  return false;
#endif
}

// bfloat16 x bfloat16 products on AVX512_BF16 dot products (bf16_dot.h), with the AVX-512 backend.
static const bool has_bf16_dot_cached = bf16dot::available();
static bool g_bf16_dot = true;  // off: bfloat16 weights widened to float32 (to measure the difference)

static bool bf16_dot_runs() { return g_backend == AVX512 && has_bf16_dot_cached && g_bf16_dot; }

static void set_backend(const std::string& name) {
  const auto ok = supported_backends();
  TORCH_CHECK(std::find(ok.begin(), ok.end(), name) != ok.end(), "backend '", name,
              "' is not supported on this CPU (supported: ", c10::Join(", ", ok), ")");
  for (int b = 0; b < 3; ++b)
    if (name == BACKEND_NAMES[b]) g_backend = b;
}

// Split output rows over OpenMP threads (torch's own runtime: torch.set_num_threads applies), in
// contiguous ranges so each thread streams its own part of the weight. Small problems stay serial.
template <class Fn>
static void parallel_rows(int64_t N, int64_t bytes_per_row, Fn fn, int64_t align = 4) {
  const int threads = omp_get_max_threads();
  const bool parallel = threads > 1 && N * bytes_per_row >= (64 << 10) && !omp_in_parallel();
  if (!parallel) return fn(0, N);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t per = ((N + T - 1) / T + align - 1) / align * align;  // whole row tiles (4 rows; weight tiles: 1)
    const int64_t n0 = std::min<int64_t>(N, t * per), n1 = std::min<int64_t>(N, n0 + per);
    if (n0 < n1) fn(n0, n1);
  }
}

#define WB_BACKEND_CALL(FN, ...)                      \
  switch (g_backend) {                                \
    case AVX512: avx512::FN(__VA_ARGS__); break;      \
    case AVX2: avx2::FN(__VA_ARGS__); break;          \
    default: scalar::FN(__VA_ARGS__); break;          \
  }
#define WB_BACKEND_CALL_RET(OUT, FN, ...)            \
  switch (g_backend) {                                \
    case AVX512: OUT = avx512::FN(__VA_ARGS__); break; \
    case AVX2: OUT = avx2::FN(__VA_ARGS__); break;     \
    default: OUT = scalar::FN(__VA_ARGS__); break;     \
  }
#ifndef WB_X86
#undef WB_BACKEND_CALL
#undef WB_BACKEND_CALL_RET
#define WB_BACKEND_CALL(FN, ...) scalar::FN(__VA_ARGS__);
#define WB_BACKEND_CALL_RET(OUT, FN, ...) OUT = scalar::FN(__VA_ARGS__);
#endif

static void check_x(const at::Tensor& x, int64_t K) {
  TORCH_CHECK(x.device().is_cpu(), "CPU kernels need CPU tensors");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, "x must be (..., ", K, "), got ", x.sizes());
}

// x (..., K) float32/bfloat16/float16 -> float32 contiguous; the result goes back to x's dtype.
static at::Tensor as_float(const at::Tensor& x) {
  return x.scalar_type() == at::kFloat && x.is_contiguous() ? x : x.to(at::kFloat).contiguous();
}

// y of shape (..., N) for x of shape (..., K), float32 until `finish`.
static at::Tensor new_output(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = N;
  return at::empty(sizes, x.options().dtype(at::kFloat));
}

static at::Tensor finish(const at::Tensor& y, const at::Tensor& x) {
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

// Output rows [n0, n1) of y = x @ w.T for M (<= 4) rows of float32 x; w: (N, K) float32, bfloat16, or
// int8 times scale[n] per row. xb: the same rows of x as bfloat16 when their values are bfloat16 ones
// (a bfloat16 model's activations), for bfloat16 dot products where they run; else null.
static void dense_range(const at::Tensor& w, const float* scale, const float* xp, float* yp, int M, int64_t n0,
                        int64_t n1, const uint16_t* xb = nullptr) {
  const int64_t N = w.size(0), K = w.size(1);
  switch (w.scalar_type()) {
    case at::kFloat: WB_BACKEND_CALL(dense<float>, w.data_ptr<float>(), scale, xp, yp, M, N, K, n0, n1); break;
    case at::kBFloat16:
#ifdef WB_X86
      if (xb && bf16_dot_runs()) return bf16dot::dense((const uint16_t*)w.data_ptr(), xb, yp, M, N, K, n0, n1);
#endif
      WB_BACKEND_CALL(dense<uint16_t>, (const uint16_t*)w.data_ptr(), scale, xp, yp, M, N, K, n0, n1);
      break;
    default: WB_BACKEND_CALL(dense<int8_t>, w.data_ptr<int8_t>(), scale, xp, yp, M, N, K, n0, n1); break;
  }
}

// y = x @ w.T (times scale[n] per row for int8). w: (N, K) float32, bfloat16 or int8.
static at::Tensor dense(const at::Tensor& x_, const at::Tensor& w, const c10::optional<at::Tensor>& scale_) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "weight must be a contiguous (out, in) matrix");
  const int64_t N = w.size(0), K = w.size(1);
  check_x(x_, K);
  const at::Tensor x = as_float(x_);
  const int64_t rows = x.numel() / K;
  at::Tensor y = new_output(x_, N);
  const float* scale = nullptr;
  at::Tensor scale_t;
  if (w.scalar_type() == at::kChar) {
    TORCH_CHECK(scale_.has_value(), "int8 weights need a per-row scale");
    scale_t = scale_->to(at::kFloat).contiguous();
    TORCH_CHECK(scale_t.numel() == N, "int8 scale must hold one float per output row");
    scale = scale_t.data_ptr<float>();
  } else {
    TORCH_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16,
                "dense kernel weights: float32, bfloat16 or int8, got ", w.scalar_type());
  }
  // bfloat16 x and weights: the values are bfloat16 ones, for bfloat16 dot products where they run
  const at::Tensor xb = w.scalar_type() == at::kBFloat16 && x_.scalar_type() == at::kBFloat16 ? x_.contiguous()
                                                                                                : at::Tensor();
  for (int64_t m0 = 0; m0 < rows; m0 += 4) {  // up to 4 rows of x per pass over the weight
    const int M = (int)std::min<int64_t>(4, rows - m0);
    const float* xp = x.data_ptr<float>() + m0 * K;
    const uint16_t* xbp = xb.defined() ? (const uint16_t*)xb.data_ptr() + m0 * K : nullptr;
    float* yp = y.data_ptr<float>() + m0 * N;
    parallel_rows(N, K * w.element_size(),
                  [&](int64_t n0, int64_t n1) { dense_range(w, scale, xp, yp, M, n0, n1, xbp); });
  }
  return finish(y, x_);
}

// y = x @ w.T for float32 w and any number of rows of x (gemm_f32.h; AVX-512): for prompts, where
// the matrix-vector kernels would read the weight once per 4 rows. Threads take ranges of panels.
static bool gemm_fits() { return g_backend == AVX512; }

static at::Tensor gemm(const at::Tensor& x_, const at::Tensor& w) {
  TORCH_CHECK(gemm_fits(), "the float32 GEMM needs the AVX-512 backend");
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.dim() == 2 && w.is_contiguous(),
              "the float32 GEMM needs a contiguous float32 (out, in) weight");
  const int64_t N = w.size(0), K = w.size(1);
  check_x(x_, K);
  const at::Tensor x = as_float(x_);
  const int64_t rows = x.numel() / K;
  at::Tensor y = new_output(x_, N);
#ifdef WB_X86
  const int64_t panels = (N + gemm_f32::PANEL - 1) / gemm_f32::PANEL;
  parallel_rows(panels, gemm_f32::PANEL * K * 4 * std::max<int64_t>(1, rows / 4), [&](int64_t p0, int64_t p1) {
    at::Tensor packed = at::empty({(p1 - p0) * gemm_f32::PANEL * K + 16}, x.options());
    float* P = packed.data_ptr<float>();
    P += (64 - ((uintptr_t)P & 63)) % 64 / sizeof(float);  // 64-byte aligned, for whole-register loads
    gemm_f32::panels(w.data_ptr<float>(), x.data_ptr<float>(), y.data_ptr<float>(), rows, N, K, p0, p1, P);
  }, 1);
#endif
  return finish(y, x_);
}

// Int4WeightOnlyLinear's tensors: packed (N, Kp/2) uint8, scale (N, Kp/G) float32, zero (N, Kp/G)
// uint8. Returns Kp, the inputs per packed row (K padded to whole groups).
static int64_t check_int4(const at::Tensor& packed, const at::Tensor& scale, const at::Tensor& zero, int64_t G,
                          int64_t K) {
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 2 && packed.is_contiguous(),
              "packed int4 weights must be a contiguous uint8 matrix");
  const int64_t N = packed.size(0), Kp = packed.size(1) * 2;
  TORCH_CHECK(G >= 2 && G % 2 == 0 && Kp % G == 0 && K <= Kp && Kp - K < G, "int4 group size ", G,
              " does not fit packed rows of ", Kp, " inputs for ", K, " features");
  const int64_t groups = Kp / G;
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.numel() == N * groups,
              "int4 scale must be a float32 (out, groups) matrix");
  TORCH_CHECK(zero.scalar_type() == at::kByte && zero.numel() == N * groups,
              "int4 zero point must be a uint8 (out, groups) matrix");
  return Kp;
}

static at::Tensor int4(const at::Tensor& x_, const at::Tensor& packed, const at::Tensor& scale_,
                       const at::Tensor& zero_, int64_t G, int64_t K) {
  const at::Tensor scale = scale_.contiguous(), zero = zero_.contiguous();
  const int64_t Kp = check_int4(packed, scale, zero, G, K), N = packed.size(0), groups = Kp / G;
  check_x(x_, K);
  const at::Tensor x = as_float(x_);
  const int64_t rows = x.numel() / K;
  // xr: x padded to Kp, each full 32-input chunk of a group reordered (even inputs, then odd);
  // xs: x summed per group.
  at::Tensor xr = at::empty({rows, Kp}, x.options()), xs = at::empty({rows, groups}, x.options());
  const float* xp = x.data_ptr<float>();
  float* xsp = xs.data_ptr<float>();
  for (int64_t m = 0; m < rows; ++m) {
    float* xrp = xr.data_ptr<float>() + m * Kp;
    std::copy(xp + m * K, xp + (m + 1) * K, xrp);
    std::fill(xrp + K, xrp + Kp, 0.0f);  // the padded tail of the last group
    for (int64_t g = 0; g < groups; ++g) {
      float* grp = xrp + g * G;
      float s = 0.0f;
      for (int64_t j = 0; j < G; ++j) s += grp[j];
      xsp[m * groups + g] = s;
      for (int64_t c = 0; c + 32 <= G; c += 32) {  // even inputs, then odd ones
        float chunk[32];
        for (int i = 0; i < 16; ++i) chunk[i] = grp[c + 2 * i], chunk[16 + i] = grp[c + 2 * i + 1];
        std::copy(chunk, chunk + 32, grp + c);
      }
    }
  }
  float* xrp = xr.data_ptr<float>();
  at::Tensor y = new_output(x_, N);
  for (int64_t m0 = 0; m0 < rows; m0 += 4) {
    const int M = (int)std::min<int64_t>(4, rows - m0);
    parallel_rows(N, Kp / 2, [&](int64_t n0, int64_t n1) {
      WB_BACKEND_CALL(int4, packed.data_ptr<uint8_t>(), scale.data_ptr<float>(), zero.data_ptr<uint8_t>(),
                      xrp + m0 * Kp, xsp + m0 * groups, y.data_ptr<float>() + m0 * N, M, N, Kp, G, n0, n1);
    });
  }
  return finish(y, x_);
}

// Int4WeightOnlyLinear with x rounded to int8 per block of 32 inputs (int4_q8.h): integer dot
// products on the AVX-512 backend when the CPU has VNNI, the portable loop otherwise.
static at::Tensor int4_q8(const at::Tensor& x_, const at::Tensor& packed, const at::Tensor& scale_,
                          const at::Tensor& zero_, int64_t G, int64_t K) {
  const at::Tensor scale = scale_.contiguous(), zero = zero_.contiguous();
  const int64_t Kp = check_int4(packed, scale, zero, G, K), N = packed.size(0), groups = Kp / G;
  TORCH_CHECK(q8::fits(G, Kp), "the int8-activation int4 kernel needs a group size that is a multiple of 32 and "
              "divides 128 or is a multiple of it, and rows padded to a multiple of 64 inputs (got group size ",
              G, ", ", Kp, " inputs)");
  check_x(x_, K);
  const at::Tensor x = as_float(x_);
  const int64_t rows = x.numel() / K;
  // one scratch buffer: lane scales and group sums (floats), then the int8 activations
  at::Tensor scratch = at::empty({rows * (Kp / q8::LANE + groups + Kp / 4)}, x.options());
  float* lane_scale = scratch.data_ptr<float>();
  float* xsum = lane_scale + rows * (Kp / q8::LANE);
  int8_t* xq = (int8_t*)(xsum + rows * groups);
  const bool vnni = vnni_runs();
  for (int64_t m = 0; m < rows; ++m) {
    const float* xm = x.data_ptr<float>() + m * K;
    float* lm = lane_scale + m * (Kp / q8::LANE);
#ifdef WB_X86
    if (vnni) {
      q8_vnni::quantize_row(xm, K, Kp, G, xq + m * Kp, lm, xsum + m * groups);
      continue;
    }
#endif
    q8::quantize_row(xm, K, Kp, G, xq + m * Kp, lm, xsum + m * groups);
  }
  at::Tensor y = new_output(x_, N);
  for (int64_t m0 = 0; m0 < rows; m0 += 4) {
    const int M = (int)std::min<int64_t>(4, rows - m0);
    const int8_t* xp = xq + m0 * Kp;
    const float* lp = lane_scale + m0 * (Kp / q8::LANE);
    const float* sp = xsum + m0 * groups;
    float* yp = y.data_ptr<float>() + m0 * N;
    parallel_rows(N, Kp / 2, [&](int64_t n0, int64_t n1) {
#ifdef WB_X86
      if (vnni)
        return q8_vnni::rows(packed.data_ptr<uint8_t>(), scale.data_ptr<float>(), zero.data_ptr<uint8_t>(), xp, lp,
                             sp, yp, M, N, Kp, G, n0, n1);
#endif
      q8::rows_scalar(packed.data_ptr<uint8_t>(), scale.data_ptr<float>(), zero.data_ptr<uint8_t>(), xp, lp, sp, yp,
                      M, N, Kp, G, n0, n1);
    });
  }
  return finish(y, x_);
}

// GGUFBlockLinear: raw (N, K/32 * block bytes) uint8; type 0 = Q8_0, 1 = Q4_0, 2 = Q4_1.
static at::Tensor gguf(const at::Tensor& x_, const at::Tensor& raw, int64_t type, int64_t K) {
  TORCH_CHECK(type >= 0 && type <= 2, "GGUF block type id must be 0 (Q8_0), 1 (Q4_0) or 2 (Q4_1)");
  const int64_t block_bytes = type == 0 ? 34 : (type == 1 ? 18 : 20);
  TORCH_CHECK(raw.scalar_type() == at::kByte && raw.dim() == 2 && raw.is_contiguous(),
              "raw GGUF blocks must be a contiguous uint8 matrix");
  TORCH_CHECK(K % 32 == 0 && raw.size(1) == K / 32 * block_bytes, "raw GGUF rows of ", raw.size(1),
              " bytes do not hold ", K, " weights");
  check_x(x_, K);
  const at::Tensor x = as_float(x_);
  const int64_t rows = x.numel() / K, N = raw.size(0), blocks = K / 32;
  at::Tensor xs = at::empty({rows, blocks}, x.options());  // x summed per block
  for (int64_t i = 0; i < rows * blocks; ++i) {
    float s = 0.0f;
    for (int j = 0; j < 32; ++j) s += x.data_ptr<float>()[i * 32 + j];
    xs.data_ptr<float>()[i] = s;
  }
  at::Tensor y = new_output(x_, N);
  for (int64_t m0 = 0; m0 < rows; m0 += 4) {
    const int M = (int)std::min<int64_t>(4, rows - m0);
    parallel_rows(N, raw.size(1), [&](int64_t n0, int64_t n1) {
      WB_BACKEND_CALL(gguf, (int)type, raw.data_ptr<uint8_t>(), x.data_ptr<float>() + m0 * K,
                      xs.data_ptr<float>() + m0 * blocks, y.data_ptr<float>() + m0 * N, M, N, K, n0, n1);
    });
  }
  return finish(y, x_);
}

static void check_gguf_q8(const at::Tensor& raw, int64_t type, int64_t K) {
  TORCH_CHECK(blocks_q8::fits(type, K), "the int8-activation GGUF kernel covers Q4_0 (1) and Q4_1 (2) rows of whole "
              "blocks, got type ", type, " with ", K, " inputs");
  const int64_t block_bytes = type == 1 ? 18 : 20, blocks = K / 32;
  TORCH_CHECK(raw.scalar_type() == at::kByte && raw.dim() == 2 && raw.is_contiguous() &&
              raw.size(1) == blocks * block_bytes, "raw GGUF blocks must be a contiguous uint8 matrix of ", blocks,
              " blocks per row");
}

// x rounded to int8 per block of 32, as the gguf_q8 and tiles kernels take it: dx, xsum, the integer
// sums, then the int8 rows (pointers into `scratch`, which owns them). The three quantizers give the
// same bytes; the fastest one the CPU runs is used.
struct RowsQ8 {
  at::Tensor scratch;
  float *dx, *xsum;
  int32_t* isum;
  int8_t* xq;
  RowsQ8(const at::Tensor& x, int64_t rows, int64_t K) {
    const int64_t blocks = K / 32;
    scratch = at::empty({rows * (3 * blocks + K / 4)}, x.options());
    dx = scratch.data_ptr<float>(), xsum = dx + rows * blocks, isum = (int32_t*)(xsum + rows * blocks);
    xq = (int8_t*)(isum + rows * blocks);
    const bool vnni = vnni_runs(), avx2 = g_backend >= AVX2;
    for (int64_t m = 0; m < rows; ++m) {
      const float* xm = x.data_ptr<float>() + m * K;
      const int64_t at = m * blocks;
#ifdef WB_X86
      if (vnni) {
        blocks_q8_vnni::quantize_row(xm, K, xq + m * K, dx + at, xsum + at, isum + at);
        continue;
      }
      if (avx2) {
        tiles_avx2::quantize_row(xm, K, xq + m * K, dx + at, xsum + at, isum + at);
        continue;
      }
#endif
      (void)avx2;
      blocks_q8::quantize_row(xm, K, xq + m * K, dx + at, xsum + at, isum + at);
    }
  }
};

// GGUFBlockLinear's Q8_0 / Q4_0 / Q4_1 blocks regrouped into tiles of 16 rows (gguf_q8.h), for tiles_q8.
static at::Tensor gguf_tiles(const at::Tensor& raw, int64_t type, int64_t K) {
  if (type == 0) {
    TORCH_CHECK(K % 32 == 0 && raw.scalar_type() == at::kByte && raw.dim() == 2 && raw.is_contiguous() &&
                raw.size(1) == K / 32 * 34, "Q8_0 blocks must be a contiguous uint8 matrix of ", K / 32,
                " blocks per row");
  } else {
    check_gguf_q8(raw, type, K);
  }
  TORCH_CHECK(tiles_fit(), "weight tiles need the AVX2 or AVX-512 backend");
  const int64_t N = raw.size(0);
  at::Tensor out = at::empty({(N + 15) / 16, K / 32 * tile_layout::tile_block_bytes(
                                                 type == 0 ? tile_layout::BYTES_F32 : tile_layout::NIBBLES_F16)},
                             raw.options());
#ifdef WB_X86
  if (type == 0) tile_layout::make_q8_0_tiles(raw.data_ptr<uint8_t>(), N, K, out.data_ptr<uint8_t>());
  else tile_layout::make_tiles(type, raw.data_ptr<uint8_t>(), N, K, out.data_ptr<uint8_t>());
#endif
  return out;
}

// Int8WeightOnlyLinear's int8 rows as 8-bit tiles, for tiles_q8 with the layer's row scales.
static at::Tensor int8_tiles(const at::Tensor& q) {
  TORCH_CHECK(q.scalar_type() == at::kChar && q.dim() == 2 && q.is_contiguous() && q.size(1) % 32 == 0,
              "int8 tiles need a contiguous int8 matrix of rows of whole blocks of 32, got ", q.sizes());
  TORCH_CHECK(tiles_fit(), "weight tiles need the AVX2 or AVX-512 backend");
  const int64_t N = q.size(0), K = q.size(1);
  at::Tensor out = at::empty({(N + 15) / 16, K / 32 * tile_layout::tile_block_bytes(tile_layout::BYTES)},
                             q.options().dtype(at::kByte));
#ifdef WB_X86
  tile_layout::make_int8_tiles(q.data_ptr<int8_t>(), N, K, out.data_ptr<uint8_t>());
#endif
  return out;
}

// Whether int4_tiles covers this layout: groups and rows of whole activation blocks.
static bool int4_tiles_fit(int64_t G, int64_t K, int64_t Kp) { return G % 32 == 0 && K % 32 == 0 && Kp - K < G; }

// Int4WeightOnlyLinear's weights as tiles of 16 rows with float32 scales (gguf_q8.h), for tiles_q8.
static at::Tensor int4_tiles(const at::Tensor& packed, const at::Tensor& scale_, const at::Tensor& zero_, int64_t G,
                             int64_t K) {
  const at::Tensor scale = scale_.contiguous(), zero = zero_.contiguous();
  const int64_t Kp = check_int4(packed, scale, zero, G, K), N = packed.size(0);
  TORCH_CHECK(int4_tiles_fit(G, K, Kp), "int4 tiles need a group size and ", K, " inputs that are multiples of 32, "
              "got group size ", G);
  TORCH_CHECK(tiles_fit(), "weight tiles need the AVX2 or AVX-512 backend");
  at::Tensor out = at::empty({(N + 15) / 16, K / 32 * tile_layout::tile_block_bytes(tile_layout::NIBBLES_F32)},
                             packed.options());
#ifdef WB_X86
  tile_layout::make_int4_tiles(packed.data_ptr<uint8_t>(), scale.data_ptr<float>(), zero.data_ptr<uint8_t>(), N,
                                  K, Kp, G, out.data_ptr<uint8_t>());
#endif
  return out;
}

// Which layout an N-row weight's tiles of rows of K weights hold (gguf_tiles, int4_tiles or int8_tiles:
// their row length says which); an error where they hold none.
static int tile_kind(const at::Tensor& tiles, int64_t K, int64_t N) {
  TORCH_CHECK(tiles_fit(), "weight tiles need the AVX2 or AVX-512 backend");
  TORCH_CHECK(K % 32 == 0 && tiles.scalar_type() == at::kByte && tiles.dim() == 2 && tiles.is_contiguous() &&
              tiles.size(0) == (N + 15) / 16, "weight tiles of ", tiles.sizes(), " do not hold ", N, " rows");
  int kind = -1;
#ifdef WB_X86
  for (int k : {tile_layout::NIBBLES_F16, tile_layout::NIBBLES_F32, tile_layout::BYTES_F32,
                tile_layout::BYTES})
    if (tiles.size(1) == K / 32 * tile_layout::tile_block_bytes(k)) kind = k;
#endif
  TORCH_CHECK(kind >= 0, "weight tiles of ", tiles.sizes(), " do not hold rows of ", K, " weights");
  return kind;
}

// Tiles [t0, t1) of one weight against rows m0..m0+M-1 of q: y (row stride N) from its row m0;
// row_scale: the rows' scales of int8 tiles (else unused).
static void tiles_range(int kind, const at::Tensor& tiles, const float* row_scale, const RowsQ8& q, int64_t m0,
                        int64_t M, float* y, int64_t N, int64_t K, int64_t t0, int64_t t1) {
#ifdef WB_X86
  const uint8_t* tp = tiles.data_ptr<uint8_t>();
  const int64_t at = m0 * (K / 32);
  const int8_t* xq = q.xq + m0 * K;
#define WB_TILES(KIND)                                                                                         \
  if (vnni_runs())                                                                                               \
    return blocks_q8_vnni::tiles_rows<KIND>(tp, xq, q.dx + at, q.xsum + at, q.isum + at, row_scale, y, M, N, K, t0, \
                                            t1);                                                                 \
  return tiles_avx2::tiles_rows<KIND>(tp, xq, q.dx + at, q.xsum + at, row_scale, y, M, N, K, t0, t1)
  switch (kind) {
    case tile_layout::NIBBLES_F16: WB_TILES(tile_layout::NIBBLES_F16);
    case tile_layout::NIBBLES_F32: WB_TILES(tile_layout::NIBBLES_F32);
    case tile_layout::BYTES_F32: WB_TILES(tile_layout::BYTES_F32);
    default: WB_TILES(tile_layout::BYTES);
  }
#undef WB_TILES
#endif
}

// The rows' scales int8 tiles need (float32, N of them), checked; null for the other layouts.
static at::Tensor tile_scales(int kind, const c10::optional<at::Tensor>& scale, int64_t N) {
#ifdef WB_X86
  if (kind != tile_layout::BYTES) return at::Tensor();
#endif
  TORCH_CHECK(scale.has_value() && scale->numel() == N, "int8 tiles need the layer's ", N, " row scales");
  return scale->to(at::kFloat).contiguous();
}

// The product of x, rounded to int8 per block of 32, with an N-row weight's tiles (int8 tiles: times
// the rows' scales), for any number of rows of x: a prompt's rows are rounded as a decode step's are.
static at::Tensor tiles_q8(const at::Tensor& x_, const at::Tensor& tiles, int64_t K, int64_t N,
                           const c10::optional<at::Tensor>& scale_) {
  const int kind = tile_kind(tiles, K, N);
  const at::Tensor scale = tile_scales(kind, scale_, N);
  const float* row_scale = scale.defined() ? scale.data_ptr<float>() : nullptr;
  check_x(x_, K);
  const at::Tensor x = as_float(x_);
  const int64_t rows = x.numel() / K;
  const RowsQ8 q(x, rows, K);
  at::Tensor y = new_output(x_, N);
  // Rows in blocks of 256 (up to 384 KB of int8 x), so that the rows every tile passes over stay in L2.
  for (int64_t m0 = 0; m0 < rows; m0 += 256) {
    const int64_t M = std::min<int64_t>(256, rows - m0);
    parallel_rows(tiles.size(0), tiles.size(1) * std::max<int64_t>(1, M / 4), [&](int64_t t0, int64_t t1) {
      tiles_range(kind, tiles, row_scale, q, m0, M, y.data_ptr<float>() + m0 * N, N, K, t0, t1);
    }, 1);
  }
  return finish(y, x_);
}

// GGUFBlockLinear's Q4_0 / Q4_1 product with x rounded to int8 per block of 32 (gguf_q8.h): integer
// dot products on the AVX-512 backend when the CPU has VNNI, the portable loop otherwise.
static at::Tensor gguf_q8(const at::Tensor& x_, const at::Tensor& raw, int64_t type, int64_t K) {
  check_gguf_q8(raw, type, K);
  check_x(x_, K);
  const at::Tensor x = as_float(x_);
  const int64_t rows = x.numel() / K, N = raw.size(0), blocks = K / 32;
  const bool vnni = vnni_runs();
  const RowsQ8 q(x, rows, K);
  const float *dx = q.dx, *xsum = q.xsum;
  const int8_t* xq = q.xq;
  at::Tensor y = new_output(x_, N);
  for (int64_t m0 = 0; m0 < rows; m0 += 4) {
    const int M = (int)std::min<int64_t>(4, rows - m0);
    float* yp = y.data_ptr<float>() + m0 * N;
    parallel_rows(N, raw.size(1), [&](int64_t n0, int64_t n1) {
#ifdef WB_X86
      if (vnni)
        return blocks_q8_vnni::rows(type, raw.data_ptr<uint8_t>(), xq + m0 * K, dx + m0 * blocks, xsum + m0 * blocks,
                                  yp, M, N, K, n0, n1);
#endif
      blocks_q8::rows_scalar(type, raw.data_ptr<uint8_t>(), xq + m0 * K, dx + m0 * blocks, xsum + m0 * blocks, yp, M,
                           N, K, n0, n1);
    });
  }
  return finish(y, x_);
}

// ---- the other per-token operations of a decode step, where PyTorch's per-call cost dominates ----

// float32 -> bfloat16, rounding to nearest even like PyTorch's conversion
static inline uint16_t float_to_bf16(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((b >> 16) | 0x40);  // NaN stays NaN
  return (uint16_t)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

// Elements of a float32 or bfloat16 tensor as floats, and results stored back in its dtype (each
// store rounds, as every PyTorch operation on bfloat16 tensors does).
template <typename T> static inline float widen(T v);
template <> inline float widen<float>(float v) { return v; }
template <> inline float widen<uint16_t>(uint16_t v) { return bf16_to_float(v); }
template <typename T> static inline T narrow(float v);
template <> inline float narrow<float>(float v) { return v; }
template <> inline uint16_t narrow<uint16_t>(float v) { return float_to_bf16(v); }

static bool float_or_bf16(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16;
}

// RMSNorm rows, as the reference rounds them: weight * (x * 1/sqrt(mean(x^2) + eps)), the
// normalised row rounded to x's dtype before the product.
template <typename T>
static void rms_norm_rows(const T* x, const T* w, T* y, int64_t rows, int64_t D, float eps) {
#pragma omp parallel for if (rows >= 64 && !omp_in_parallel())  // a prompt's rows; each row alike either way
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * D;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < D; ++i) ss += widen(xr[i]) * widen(xr[i]);
    const float inv = 1.0f / std::sqrt(ss / (float)D + eps);
    for (int64_t i = 0; i < D; ++i) y[r * D + i] = narrow<T>(widen(w[i]) * widen(narrow<T>(widen(xr[i]) * inv)));
  }
}

static at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const int64_t D = weight.numel();
  TORCH_CHECK(float_or_bf16(x) && x.scalar_type() == weight.scalar_type() && x.is_contiguous() &&
              weight.is_contiguous() && x.size(-1) == D,
              "rms_norm: contiguous x (..., D) and weight (D) of one dtype, float32 or bfloat16");
  at::Tensor y = at::empty_like(x);
  if (x.scalar_type() == at::kFloat)
    rms_norm_rows(x.data_ptr<float>(), weight.data_ptr<float>(), y.data_ptr<float>(), x.numel() / D, D, (float)eps);
  else
    rms_norm_rows((const uint16_t*)x.data_ptr(), (const uint16_t*)weight.data_ptr(), (uint16_t*)y.data_ptr(),
                  x.numel() / D, D, (float)eps);
  return y;
}

// x * cos + rotate_half(x) * sin, each operation rounded to T as PyTorch's would be. x (B, H, T_, hd)
// with any strides (last axis contiguous); cos, sin (B, 1, T_, hd) contiguous. y's row of sequence b,
// head h, token t starts at y + b * yb + h * yh + t * yt (the decode stack writes keys into the cache).
template <typename T>
static void rope_rows(const at::Tensor& x, const T* cos, const T* sin, T* y, int64_t B, int64_t H, int64_t hd,
                      int64_t yb, int64_t yh, int64_t T_ = 1, int64_t yt = 0) {
  const int64_t half = hd / 2;
  const T* xp = (const T*)x.data_ptr();
  const int64_t sb = x.stride(0), sh = x.stride(1), st = x.stride(2);
  parallel_rows(B * H, T_ * hd * (int64_t)sizeof(T), [&](int64_t r0, int64_t r1) {  // a prompt's heads over threads
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / H, h = r % H;
      for (int64_t t = 0; t < T_; ++t) {
        const T* xr = xp + b * sb + h * sh + t * st;
        const T *c = cos + (b * T_ + t) * hd, *s = sin + (b * T_ + t) * hd;
        T* yr = y + b * yb + h * yh + t * yt;
        for (int64_t i = 0; i < half; ++i)  // two loops without a branch: both vectorise
          yr[i] = narrow<T>(widen(narrow<T>(widen(xr[i]) * widen(c[i]))) + widen(narrow<T>(-widen(xr[i + half]) * widen(s[i]))));
        for (int64_t i = half; i < hd; ++i)
          yr[i] = narrow<T>(widen(narrow<T>(widen(xr[i]) * widen(c[i]))) + widen(narrow<T>(widen(xr[i - half]) * widen(s[i]))));
      }
    }
  }, 1);
}

// Rotary embedding of x (B, H, T, hd): one new token per sequence or a prompt's T tokens, any strides
// with the last axis contiguous; cos, sin (B, 1, T, hd) contiguous, of x's dtype. The result has x's
// layout, as PyTorch's would (the attention kernel takes keys and values laid out alike), and each
// token's row is what it would be alone.
static at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(float_or_bf16(x) && x.dim() == 4 && x.stride(3) == 1,
              "rope: float32 or bfloat16 x (B, H, T, hd) with a contiguous last axis");
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), hd = x.size(3);
  TORCH_CHECK(cos.scalar_type() == x.scalar_type() && sin.scalar_type() == x.scalar_type() && cos.is_contiguous() &&
              sin.is_contiguous() && cos.numel() == B * T * hd && sin.numel() == B * T * hd && hd % 2 == 0,
              "rope: contiguous cos and sin of shape (B, 1, T, hd) in x's dtype");
  at::Tensor y = x.is_non_overlapping_and_dense() ? at::empty_like(x) : at::empty({B, H, T, hd}, x.options());
  if (x.scalar_type() == at::kFloat)
    rope_rows(x, cos.data_ptr<float>(), sin.data_ptr<float>(), y.data_ptr<float>(), B, H, hd, y.stride(0), y.stride(1),
              T, y.stride(2));
  else
    rope_rows(x, (const uint16_t*)cos.data_ptr(), (const uint16_t*)sin.data_ptr(), (uint16_t*)y.data_ptr(), B, H, hd,
              y.stride(0), y.stride(1), T, y.stride(2));
  return y;
}

// Whether decode_attention covers this head size and query heads per KV head on this CPU.
static bool decode_attention_fits(int64_t head_dim, int64_t groups) {
#ifdef WB_X86
  return g_backend >= AVX2 && attn::fits(head_dim, groups);
#else
  return false;
#endif
}

// attn::decode or attn::prefill (attention.h) on the chunk kernel of the backend that runs.
#define WB_ATTENTION(FN, ...)                                                                          \
  (g_backend == AVX512 ? attn::FN<attn512::Kernel>(__VA_ARGS__) : attn::FN<attn256::Kernel>(__VA_ARGS__))

// One query per sequence (attention.h): q (B, H, 1, hd), k and v (B, KVH, S, hd), float32 or bfloat16
// with a contiguous last axis, mask (B or 1, 1, 1, S) bool or none -> (B, 1, H * hd) in q's dtype.
static at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const c10::optional<at::Tensor>& mask) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q.size(2) == 1, "decode_attention: q (B, H, 1, hd), "
              "k and v (B, KVH, S, hd)");
  const int64_t B = q.size(0), H = q.size(1), hd = q.size(3), KVH = k.size(1), S = k.size(2);
  TORCH_CHECK(float_or_bf16(q) && k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "decode_attention: q, k and v of one dtype, float32 or bfloat16");
  TORCH_CHECK(k.sizes() == v.sizes() && k.strides() == v.strides() && k.size(0) == B && k.size(3) == hd &&
              q.stride(3) == 1 && k.stride(3) == 1 && H % KVH == 0 && S >= 1,
              "decode_attention: k and v of one shape and layout, contiguous last axes, H a multiple of KVH");
  TORCH_CHECK(decode_attention_fits(hd, H / KVH), "decode_attention: head size ", hd, " with ", H / KVH,
              " query heads per KV head is not covered on this CPU");
  const bool* mp = nullptr;
  int64_t mb = 0, ms = 0;
  at::Tensor m;
  if (mask.has_value()) {
    m = *mask;
    TORCH_CHECK(m.scalar_type() == at::kBool && m.dim() == 4 && m.size(2) == 1 && m.size(3) == S &&
                (m.size(0) == 1 || m.size(0) == B), "decode_attention: a bool mask (B or 1, 1, 1, S)");
    mp = m.data_ptr<bool>(), mb = m.size(0) == 1 ? 0 : m.stride(0), ms = m.stride(3);
  }
  at::Tensor out = at::empty({B, 1, H * hd}, q.options().dtype(at::kFloat));  // sums in float32
#ifdef WB_X86
  const attn::Strides qs{q.stride(0), q.stride(1), 0}, kvs{k.stride(0), k.stride(1), k.stride(2)};
  const float scale = 1.0f / std::sqrt((float)hd);
  if (q.scalar_type() == at::kFloat)
    WB_ATTENTION(decode, q.data_ptr<float>(), qs, k.data_ptr<float>(), v.data_ptr<float>(), kvs, mp, mb, ms,
                 out.data_ptr<float>(), B, H, KVH, S, hd, scale);
  else
    WB_ATTENTION(decode, (const uint16_t*)q.data_ptr(), qs, (const uint16_t*)k.data_ptr(),
                 (const uint16_t*)v.data_ptr(), kvs, mp, mb, ms, out.data_ptr<float>(), B, H, KVH, S, hd, scale);
#endif
  return finish(out, q);
}

// A prompt's attention (attention.h's prefill): q (B, H, T, hd) at positions S - T .. S - 1 over k, v
// (B, KVH, S, hd), causal, mask (T, S) or (B or 1, 1, T, S) bool or none -> (B, T, H * hd) in q's
// dtype; every query as decode_attention computes it alone.
static at::Tensor prefill_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const c10::optional<at::Tensor>& mask) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "prefill_attention: q (B, H, T, hd), k and v (B, KVH, S, hd)");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = q.size(3), KVH = k.size(1), S = k.size(2);
  TORCH_CHECK(float_or_bf16(q) && k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "prefill_attention: q, k and v of one dtype, float32 or bfloat16");
  TORCH_CHECK(k.sizes() == v.sizes() && k.strides() == v.strides() && k.size(0) == B && k.size(3) == hd &&
              q.stride(3) == 1 && k.stride(3) == 1 && H % KVH == 0 && S >= T && T >= 1,
              "prefill_attention: k and v of one shape and layout, contiguous last axes, H a multiple of KVH, "
              "at least as many keys as queries");
  TORCH_CHECK(decode_attention_fits(hd, H / KVH), "prefill_attention: head size ", hd, " with ", H / KVH,
              " query heads per KV head is not covered on this CPU");
  const bool* mp = nullptr;
  int64_t mb = 0, mt = 0, ms = 0;
  at::Tensor m;
  if (mask.has_value()) {
    m = *mask;
    TORCH_CHECK(m.scalar_type() == at::kBool && m.size(-1) == S && m.size(-2) == T &&
                (m.dim() == 2 || (m.dim() == 4 && m.size(1) == 1 && (m.size(0) == 1 || m.size(0) == B))),
                "prefill_attention: a bool mask (T, S) or (B or 1, 1, T, S)");
    mp = m.data_ptr<bool>(), mt = m.stride(-2), ms = m.stride(-1);
    mb = m.dim() == 4 && m.size(0) == B ? m.stride(0) : 0;
  }
  at::Tensor out = at::empty({B, T, H * hd}, q.options().dtype(at::kFloat));
#ifdef WB_X86
  const attn::Strides qs{q.stride(0), q.stride(1), 0}, kvs{k.stride(0), k.stride(1), k.stride(2)};
  const float scale = 1.0f / std::sqrt((float)hd);
  if (q.scalar_type() == at::kFloat)
    WB_ATTENTION(prefill, q.data_ptr<float>(), qs, q.stride(2), k.data_ptr<float>(), v.data_ptr<float>(), kvs, mp, mb,
                 mt, ms, out.data_ptr<float>(), B, H, KVH, T, S - T, hd, scale);
  else
    WB_ATTENTION(prefill, (const uint16_t*)q.data_ptr(), qs, q.stride(2), (const uint16_t*)k.data_ptr(),
                 (const uint16_t*)v.data_ptr(), kvs, mp, mb, mt, ms, out.data_ptr<float>(), B, H, KVH, T, S - T, hd,
                 scale);
#endif
  return finish(out, q);
}

// The sum of a float32 buffer, each thread streaming its own contiguous part (the memory read
// bandwidth the decode kernels are held against: timed by workbench.kernels.read_bandwidth_gb_s).
static double stream_read(const at::Tensor& buffer) {
  TORCH_CHECK(buffer.device().is_cpu() && buffer.scalar_type() == at::kFloat && buffer.is_contiguous(),
              "stream_read needs a contiguous float32 CPU tensor");
  const float* p = buffer.data_ptr<float>();
  const int64_t n = buffer.numel();
  const int threads = std::max(1, omp_get_max_threads());
  std::vector<double> partial(threads, 0.0);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t per = ((n + T - 1) / T + 15) / 16 * 16;  // whole 64-byte lines per thread
    const int64_t i0 = std::min<int64_t>(n, t * per), i1 = std::min<int64_t>(n, i0 + per);
    float s = 0.0f;
    if (i0 < i1) WB_BACKEND_CALL_RET(s, read_sum, p + i0, i1 - i0);
    partial[t] = s;
  }
  double total = 0.0;
  for (double s : partial) total += s;
  return total;
}

#include "stack.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "workbench decode matrix-vector kernels (float32, bfloat16, int8, int4, GGUF blocks)";
  m.def("dense", &dense, "y = x @ w.T for float32/bfloat16 w, or int8 w times a per-row scale",
        py::arg("x"), py::arg("w"), py::arg("scale") = py::none());
  m.def("gemm", &gemm, "y = x @ w.T for float32 w and many rows of x (prompts)", py::arg("x"), py::arg("w"));
  m.def("gemm_fits", &gemm_fits, "whether gemm runs here (the AVX-512 backend)");
  m.def("int4", &int4, "Int4WeightOnlyLinear's product", py::arg("x"), py::arg("packed"), py::arg("scale"),
        py::arg("zero"), py::arg("group_size"), py::arg("in_features"));
  m.def("int4_q8", &int4_q8, "Int4WeightOnlyLinear's product with x rounded to int8 per block of 32",
        py::arg("x"), py::arg("packed"), py::arg("scale"), py::arg("zero"), py::arg("group_size"),
        py::arg("in_features"));
  m.def("int4_q8_fits", &q8::fits, "whether int4_q8 covers this group size and padded row length",
        py::arg("group_size"), py::arg("padded_in_features"));
  m.def("has_vnni", &has_vnni, "whether int4_q8 runs on integer dot products (AVX-512 VNNI) here");
  m.def("gguf", &gguf, "GGUFBlockLinear's product", py::arg("x"), py::arg("raw"), py::arg("type"),
        py::arg("in_features"));
  m.def("gguf_q8", &gguf_q8, "GGUFBlockLinear's Q4_0/Q4_1 product with x rounded to int8 per block of 32",
        py::arg("x"), py::arg("raw"), py::arg("type"), py::arg("in_features"));
  m.def("gguf_tiles", &gguf_tiles, "Q8_0/Q4_0/Q4_1 blocks regrouped 16 rows per tile for tiles_q8", py::arg("raw"),
        py::arg("type"), py::arg("in_features"));
  m.def("int8_tiles", &int8_tiles, "int8 rows regrouped 16 rows per tile for tiles_q8 (with their scales)",
        py::arg("qweight"));
  m.def("int4_tiles", &int4_tiles, "int4 weights regrouped 16 rows per tile for tiles_q8", py::arg("packed"),
        py::arg("scale"), py::arg("zero"), py::arg("group_size"), py::arg("in_features"));
  m.def("int4_tiles_fit", &int4_tiles_fit, "whether int4_tiles covers this layout", py::arg("group_size"),
        py::arg("in_features"), py::arg("padded_in_features"));
  m.def("tiles_q8", &tiles_q8, "x rounded to int8 per block of 32 times weight tiles, any number of rows",
        py::arg("x"), py::arg("tiles"), py::arg("in_features"), py::arg("out_features"), py::arg("scale") = py::none());
  m.def("tiles_fit", &tiles_fit, "whether weight tiles and tiles_q8 run here (AVX-512 VNNI or AVX2)");
  m.def("gguf_q8_fits", &blocks_q8::fits, "whether gguf_q8 covers this block type and row length", py::arg("type"),
        py::arg("in_features"));
  m.def("rms_norm", &rms_norm, "RMSNorm of float32 or bfloat16 rows", py::arg("x"), py::arg("weight"), py::arg("eps"));
  m.def("rope", &rope, "rotary embedding of new tokens (B, H, T, hd)", py::arg("x"), py::arg("cos"), py::arg("sin"));
  m.def("decode_attention", &decode_attention, "attention of one query per sequence over its cache", py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("mask") = py::none());
  m.def("prefill_attention", &prefill_attention, "a prompt's causal attention, each query as decode_attention "
        "computes it alone", py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mask") = py::none());
  m.def("decode_attention_fits", &decode_attention_fits, "whether decode_attention covers these heads here",
        py::arg("head_dim"), py::arg("groups"));
  m.def("stream_read", &stream_read, "sum of a float32 buffer read by every thread (read bandwidth)",
        py::arg("buffer"));
  // module_local: two builds of these kernels can share a process (a benchmark alternating them)
  py::class_<DecodeStack>(m, "DecodeStack", py::module_local(),
                          "every decoder layer of one decode step in one call (stack.h)")
      .def(py::init<py::list, double, int64_t, int64_t, int64_t>(), py::arg("layers"), py::arg("eps"),
           py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"))
      .def("run", &DecodeStack::run, "hidden rows after every layer; writes this step's keys and values",
           py::arg("x"), py::arg("cos"), py::arg("sin"), py::arg("k_cache"), py::arg("v_cache"), py::arg("start"),
           py::arg("mask") = py::none());
  m.def("set_grouped_products", [](bool on) { g_group_products = on; },
        "whether the decode stack runs q/k/v and gate/up in one parallel region each (default on)", py::arg("on"));
  m.def("set_bf16_dot", [](bool on) { g_bf16_dot = on; },
        "whether bfloat16 weights meet bfloat16 activations on AVX512_BF16 dot products where the CPU has them "
        "(default on)", py::arg("on"));
  m.def("bf16_dot", &bf16_dot_runs, "whether bfloat16 x bfloat16 products run on AVX512_BF16 dot products here");
  m.def("backend", &get_backend, "the instruction set in use");
  m.def("set_backend", &set_backend, "use another supported instruction set (tests)");
  m.def("supported_backends", &supported_backends, "instruction sets this CPU runs");
}
