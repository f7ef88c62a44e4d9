// One decode step through every decoder layer in a single call (included by matvec.cpp).
//
// The same maths as model.DecoderLayer for one new token per sequence over a plain KVCache: RMSNorm,
// the q/k/v products, the rotary embedding (keys written straight into the cache slot), attention,
// the output product and residual, RMSNorm, SwiGLU and residual. Every product runs on the kernels
// above, in the layer's own stored form. From Python each layer costs about a dozen dispatched
// operations, tens of microseconds each at decode size; here they are plain C++ calls, and the
// elementwise work is a loop over a few hundred numbers. Each result is rounded to the activation
// dtype where PyTorch's operation would round it, so bfloat16 models compute what the layers do.

// One weight matrix's product, as the Python layer describes it (kernels/stack.py):
// ("dense", w, scale or None) | ("int4" or "int4_q8", packed, scale, zero, group size, in features) |
// ("gguf" or "gguf_q8", raw, type id, in features) |
// ("tiles_q8", tiles, in features, out features, row scales or None).
struct LinearOp {
  enum Kind { DENSE, INT4, INT4_Q8, GGUF, GGUF_Q8, TILES_Q8 };
  Kind kind = DENSE;
  at::Tensor w, scale, zero;
  bool scaled = false;
  int tiles = -1;  // TILES_Q8: the tiles' kind
  int64_t group = 0, type = 0, in_features = 0, out = -1;

  static LinearOp parse(const py::tuple& t) {
    LinearOp op;
    const std::string kind = t[0].cast<std::string>();
    if (kind == "dense") {
      op.w = t[1].cast<at::Tensor>();
      op.scaled = !t[2].is_none();
      if (op.scaled) op.scale = t[2].cast<at::Tensor>().to(at::kFloat).contiguous();
      TORCH_CHECK(op.w.dim() == 2 && op.w.is_contiguous(), "dense: a contiguous (out, in) weight");
      op.in_features = op.w.size(1);
    } else if (kind == "int4" || kind == "int4_q8") {
      op.kind = kind == "int4" ? INT4 : INT4_Q8;
      op.w = t[1].cast<at::Tensor>(), op.scale = t[2].cast<at::Tensor>().contiguous();
      op.zero = t[3].cast<at::Tensor>().contiguous();
      op.group = t[4].cast<int64_t>(), op.in_features = t[5].cast<int64_t>();
      check_int4(op.w, op.scale, op.zero, op.group, op.in_features);
      TORCH_CHECK(op.kind == INT4 || q8::fits(op.group, op.w.size(1) * 2), "int4_q8 does not cover group size ",
                  op.group);
    } else if (kind == "gguf" || kind == "gguf_q8") {
      op.kind = kind == "gguf" ? GGUF : GGUF_Q8;
      op.w = t[1].cast<at::Tensor>(), op.type = t[2].cast<int64_t>(), op.in_features = t[3].cast<int64_t>();
    } else if (kind == "tiles_q8") {
      op.kind = TILES_Q8;
      op.w = t[1].cast<at::Tensor>(), op.in_features = t[2].cast<int64_t>(), op.out = t[3].cast<int64_t>();
      op.scaled = !t[4].is_none();
      op.tiles = tile_kind(op.w, op.in_features, op.out);
      op.scale = tile_scales(op.tiles, op.scaled ? c10::optional<at::Tensor>(t[4].cast<at::Tensor>()) : c10::nullopt,
                             op.out);
    } else {
      TORCH_CHECK(false, "unknown product kind '", kind, "'");
    }
    return op;
  }

  int64_t out_features() const { return out >= 0 ? out : w.size(0); }

  at::Tensor operator()(const at::Tensor& x) const {
    switch (kind) {
      case INT4: return int4(x, w, scale, zero, group, in_features);
      case INT4_Q8: return int4_q8(x, w, scale, zero, group, in_features);
      case GGUF: return gguf(x, w, type, in_features);
      case GGUF_Q8: return gguf_q8(x, w, type, in_features);
      case TILES_Q8: return tiles_q8(x, w, in_features, out, scaled ? c10::optional<at::Tensor>(scale) : c10::nullopt);
      default: return dense(x, w, scaled ? c10::optional<at::Tensor>(scale) : c10::nullopt);
    }
  }
};

// Products of the same float32 rows x into float32 outputs (B, 1, N). Dense ones (float32, bfloat16,
// int8 weights) share one parallel region, and so do products on weight tiles: the threads split all their output rows (or
// tiles) at once (q, k and v; gate and up), one fork and join where there would be one per matrix;
// the small k and v matrices take a few microseconds each, about what a fork and join of the threads
// costs. Tiles also round x to int8 once for the group. bf16_values: x holds bfloat16 values (a
// bfloat16 model's), which bfloat16 weights then meet on bfloat16 dot products where they run.
static bool g_group_products = true;  // off: one parallel region per matrix (to measure the difference)

static bool bf16_dense(const LinearOp* op) {
  return op->kind == LinearOp::DENSE && op->w.scalar_type() == at::kBFloat16;
}

static void products(std::initializer_list<const LinearOp*> ops, const at::Tensor& x,
                     std::initializer_list<at::Tensor*> outs, bool bf16_values) {
  const LinearOp::Kind first = (*ops.begin())->kind;
  bool grouped = g_group_products && (first == LinearOp::DENSE || first == LinearOp::TILES_Q8) && x.is_contiguous() &&
                 x.scalar_type() == at::kFloat;
  for (const LinearOp* op : ops) grouped = grouped && op->kind == first && op->in_features == x.size(-1);
  if (!grouped) {  // the products' own calls, copied into the outputs (views of them outlive the call)
    auto out = outs.begin();
    for (const LinearOp* op : ops) (*out++)->copy_((*op)(bf16_values && bf16_dense(op) ? x.to(at::kBFloat16) : x));
    return;
  }
  const int64_t K = x.size(-1), rows = x.numel() / K;
  std::vector<float*> y;
  for (at::Tensor* out : outs) y.push_back(out->data_ptr<float>());
  // Splits `total` units (rows, or tiles of 16 rows) of the ops' matrices over the threads: fn(op index, lo, hi).
  auto split = [&](int64_t total, int64_t unit_bytes, int64_t align, auto fn) {
    parallel_rows(total, unit_bytes, [&](int64_t n0, int64_t n1) {
      int64_t offset = 0, i = 0;
      for (const LinearOp* op : ops) {  // this thread's share of each matrix
        const int64_t units = first == LinearOp::TILES_Q8 ? op->w.size(0) : op->out_features();
        const int64_t lo = std::max(n0, offset), hi = std::min(n1, offset + units);
        if (lo < hi) fn(op, i, lo - offset, hi - offset);
        offset += units, ++i;
      }
    }, align);
  };
  if (first == LinearOp::TILES_Q8) {  // decode-size rows (the stack takes up to 16)
    const RowsQ8 q(x, rows, K);
    int64_t tiles = 0;
    for (const LinearOp* op : ops) tiles += op->w.size(0);
    split(tiles, (*ops.begin())->w.size(1) * std::max<int64_t>(1, rows / 4), 1,
          [&](const LinearOp* op, int64_t i, int64_t t0, int64_t t1) {
            tiles_range(op->tiles, op->w, op->scale.defined() ? op->scale.data_ptr<float>() : nullptr, q, 0, rows,
                        y[i], op->out, K, t0, t1);
          });
    return;
  }
  int64_t total = 0;
  for (const LinearOp* op : ops) total += op->out_features();
  const int64_t row_bytes = K * (*ops.begin())->w.element_size();
  bool dot = bf16_values && bf16_dot_runs();  // all these weights bfloat16: they meet x on dot products
  for (const LinearOp* op : ops) dot = dot && bf16_dense(op);
  std::vector<uint16_t> xb;  // x's bfloat16 values, exactly: their float32 bits' upper half
  if (dot) {
    const uint32_t* bits = (const uint32_t*)x.data_ptr<float>();
    xb.resize(rows * K);
    for (int64_t i = 0; i < rows * K; ++i) xb[i] = (uint16_t)(bits[i] >> 16);
  }
  for (int64_t m0 = 0; m0 < rows; m0 += 4) {
    const int M = (int)std::min<int64_t>(4, rows - m0);
    const float* xp = x.data_ptr<float>() + m0 * K;
    const uint16_t* xbp = dot ? xb.data() + m0 * K : nullptr;
    split(total, row_bytes, 4, [&](const LinearOp* op, int64_t i, int64_t n0, int64_t n1) {
      const int64_t N = op->out_features();
      dense_range(op->w, op->scaled ? op->scale.data_ptr<float>() : nullptr, xp, y[i] + m0 * N, M, n0, n1, xbp);
    });
  }
}

struct StackLayer {
  at::Tensor attn_norm, mlp_norm;
  LinearOp q, k, v, o, gate, up, down;
};

// The products take and return float32 rows (the kernels' own arithmetic); between them the stack
// keeps the model's dtype T, rounding where PyTorch's bfloat16 operations round. These loops do the
// conversions that would otherwise be a dispatched `.to()` per product.
template <typename T>
static void widen_into(const T* src, float* dst, int64_t n) {  // float32 copy of T values
  for (int64_t i = 0; i < n; ++i) dst[i] = widen(src[i]);
}

template <typename T>
static void narrow_into(const float* src, T* dst, int64_t n) {  // T copy of float32 values
  for (int64_t i = 0; i < n; ++i) dst[i] = narrow<T>(src[i]);
}

// x += round(d) (d a float32 product), rounded to T: the residual `x + o_proj(...)`.
template <typename T>
static void add_into(at::Tensor& x, const at::Tensor& d) {
  T* xp = (T*)x.data_ptr();
  const float* dp = d.data_ptr<float>();
  for (int64_t i = 0, n = x.numel(); i < n; ++i) xp[i] = narrow<T>(widen(xp[i]) + widen(narrow<T>(dp[i])));
}

// out = silu(g) * u of float32 products g, u, as F.silu(g) * u rounds each step in T; in float32 for
// the down product (the value is T's). In float32 it is PyTorch's own silu (its vectorised exp and
// std::exp differ in the last bit), so a decode step computes what a prompt's layers compute.
template <typename T>
static void silu_mul(const at::Tensor& g, const at::Tensor& u, at::Tensor& out) {
  const float* up = u.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t n = g.numel();
  if constexpr (std::is_same<T, float>::value) {
    at::silu_out(out, g);
    for (int64_t i = 0; i < n; ++i) op[i] *= up[i];
    return;
  }
  const float* gp = g.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    const float a = widen(narrow<T>(gp[i]));
    op[i] = widen(narrow<T>(widen(narrow<T>(a / (1.0f + std::exp(-a)))) * widen(narrow<T>(up[i]))));
  }
}

// Tensors a run reuses for every layer: allocating them per layer cost more than the work they hold.
struct StackBuffers {
  at::Tensor h, hf;            // normed rows in T, and in float32 for the products (h itself in float32)
  at::Tensor q, k, v;          // q/k/v products, float32 (B, 1, N)
  at::Tensor qt, kt, vt;       // the same rounded to T (q, k, v themselves in float32)
  at::Tensor q4, k4;           // qt, kt viewed (B, heads, 1, hd) for the rotary embedding
  at::Tensor qr, att;          // rotated queries (T), attention output (float32)
  at::Tensor gate, up, act;    // the MLP's products and silu(gate) * up
  at::Tensor d;                // the o or down product, added to the residual

  template <typename T>
  static StackBuffers make(const at::Tensor& x, int64_t H, int64_t KVH, int64_t hd, int64_t F) {
    const int64_t B = x.size(0), D = x.size(2);
    const bool f32 = std::is_same<T, float>::value;
    const auto t = x.options(), f = x.options().dtype(at::kFloat);
    StackBuffers b;
    b.h = at::empty_like(x), b.hf = f32 ? b.h : at::empty(x.sizes(), f);
    b.q = at::empty({B, 1, H * hd}, f), b.k = at::empty({B, 1, KVH * hd}, f), b.v = at::empty({B, 1, KVH * hd}, f);
    b.qt = f32 ? b.q : at::empty(b.q.sizes(), t), b.kt = f32 ? b.k : at::empty(b.k.sizes(), t);
    b.vt = f32 ? b.v : at::empty(b.v.sizes(), t);
    b.q4 = b.qt.view({B, H, 1, hd}), b.k4 = b.kt.view({B, KVH, 1, hd});
    b.qr = at::empty({B, H, 1, hd}, t), b.att = at::empty({B, 1, H * hd}, f);
    b.gate = at::empty({B, 1, F}, f), b.up = at::empty({B, 1, F}, f), b.act = at::empty({B, 1, F}, f);
    b.d = at::empty({B, 1, D}, f);
    return b;
  }
};

// RMSNorm of T rows x into b.h (rounded to T as the reference does) and b.hf (float32, for the products).
template <typename T>
static void norm_into(const at::Tensor& x, const at::Tensor& weight, double eps, StackBuffers& b) {
  const int64_t D = weight.numel();
  rms_norm_rows((const T*)x.data_ptr(), (const T*)weight.data_ptr(), (T*)b.h.data_ptr(), x.numel() / D, D, (float)eps);
  if (!std::is_same<T, float>::value) widen_into((const T*)b.h.data_ptr(), b.hf.data_ptr<float>(), x.numel());
}

class DecodeStack {
 public:
  DecodeStack(py::list layers, double eps, int64_t heads, int64_t kv_heads, int64_t head_dim)
      : eps_(eps), H_(heads), KVH_(kv_heads), hd_(head_dim) {
    TORCH_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0 && head_dim % 2 == 0,
                "decode stack: heads a multiple of KV heads, an even head size");
    for (const auto& item : layers) {
      const py::tuple t = item.cast<py::tuple>();
      TORCH_CHECK(t.size() == 9, "a layer is (attention norm, MLP norm, q, k, v, o, gate, up, down)");
      StackLayer l{t[0].cast<at::Tensor>().contiguous(), t[1].cast<at::Tensor>().contiguous(),
                   LinearOp::parse(t[2]), LinearOp::parse(t[3]), LinearOp::parse(t[4]), LinearOp::parse(t[5]),
                   LinearOp::parse(t[6]), LinearOp::parse(t[7]), LinearOp::parse(t[8])};
      TORCH_CHECK(l.q.out_features() == H_ * hd_ && l.k.out_features() == KVH_ * hd_ &&
                  l.v.out_features() == KVH_ * hd_, "decode stack: q/k/v products do not match the heads");
      layers_.push_back(std::move(l));
    }
  }

  // x (B, 1, D) after the embedding; cos, sin (B, 1, 1, hd) in x's dtype; k_cache, v_cache (layers, B,
  // KV heads, max_len, hd) of a KVCache; start: the slot this token's keys go to; mask (B or 1, 1, 1,
  // start + 1) bool or none. Returns the hidden rows after the last layer, (B, 1, D).
  at::Tensor run(const at::Tensor& x_, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& k_cache,
                 const at::Tensor& v_cache, int64_t start, const c10::optional<at::Tensor>& mask) const {
    TORCH_CHECK(float_or_bf16(x_) && x_.dim() == 3 && x_.size(1) == 1, "decode stack: x (B, 1, D), float32 or "
                "bfloat16");
    const int64_t B = x_.size(0), L = (int64_t)layers_.size();
    TORCH_CHECK(k_cache.dim() == 5 && k_cache.sizes() == v_cache.sizes() && k_cache.strides() == v_cache.strides() &&
                k_cache.size(0) == L && k_cache.size(1) == B && k_cache.size(2) == KVH_ && k_cache.size(4) == hd_ &&
                k_cache.stride(4) == 1 && k_cache.scalar_type() == x_.scalar_type() &&
                v_cache.scalar_type() == x_.scalar_type() && start >= 0 && start < k_cache.size(3),
                "decode stack: caches (layers, B, KV heads, max_len, head size) of x's dtype, a free slot");
    TORCH_CHECK(cos.scalar_type() == x_.scalar_type() && sin.scalar_type() == x_.scalar_type() &&
                cos.is_contiguous() && sin.is_contiguous() && cos.numel() == B * hd_ && sin.numel() == B * hd_,
                "decode stack: contiguous cos and sin (B, 1, 1, hd) in x's dtype");
    at::Tensor x = x_.contiguous().clone();  // the residual stream, updated in place
    if (x.scalar_type() == at::kFloat) return run_as<float>(x, cos, sin, k_cache, v_cache, start, mask);
    return run_as<uint16_t>(x, cos, sin, k_cache, v_cache, start, mask);
  }

 private:
  template <typename T>
  at::Tensor run_as(at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& k_cache,
                    const at::Tensor& v_cache, int64_t start, const c10::optional<at::Tensor>& mask) const {
    const int64_t B = x.size(0), groups = H_ / KVH_, S = start + 1;
    const T *c = (const T*)cos.data_ptr(), *s = (const T*)sin.data_ptr();
    const bool kernel_attention = decode_attention_fits(hd_, groups);
    const bool bf16 = !std::is_same<T, float>::value;  // every product's input is then rounded to bfloat16
    StackBuffers b = StackBuffers::template make<T>(x, H_, KVH_, hd_, layers_[0].gate.out_features());
    // the cache: layer l's keys of sequence i, KV head g, position p at kc + l * cl + i * cb + g * ch + p * cs
    const int64_t cl = k_cache.stride(0), cb = k_cache.stride(1), ch = k_cache.stride(2), cs = k_cache.stride(3);
    const bool* mp = nullptr;
    int64_t mb = 0, ms = 0;
    if (mask.has_value()) {
      TORCH_CHECK(mask->scalar_type() == at::kBool && mask->dim() == 4 && mask->size(2) == 1 && mask->size(3) == S &&
                  (mask->size(0) == 1 || mask->size(0) == B), "decode stack: a bool mask (B or 1, 1, 1, start + 1)");
      mp = mask->data_ptr<bool>(), mb = mask->size(0) == 1 ? 0 : mask->stride(0), ms = mask->stride(3);
    }
    const int64_t n_att = b.att.numel();
    for (int64_t l = 0; l < (int64_t)layers_.size(); ++l) {
      const StackLayer& layer = layers_[l];
      norm_into<T>(x, layer.attn_norm, eps_, b);
      products({&layer.q, &layer.k, &layer.v}, b.hf, {&b.q, &b.k, &b.v}, bf16);
      if (!std::is_same<T, float>::value) {
        narrow_into(b.q.data_ptr<float>(), (T*)b.qt.data_ptr(), b.q.numel());
        narrow_into(b.k.data_ptr<float>(), (T*)b.kt.data_ptr(), b.k.numel());
        narrow_into(b.v.data_ptr<float>(), (T*)b.vt.data_ptr(), b.v.numel());
      }
      T* kl = (T*)k_cache.data_ptr() + l * cl;
      T* vl = (T*)v_cache.data_ptr() + l * cl;
      rope_rows<T>(b.q4, c, s, (T*)b.qr.data_ptr(), B, H_, hd_, H_ * hd_, hd_);
      rope_rows<T>(b.k4, c, s, kl + start * cs, B, KVH_, hd_, cb, ch);  // keys straight into their slot
      for (int64_t i = 0; i < B; ++i)
        for (int64_t g = 0; g < KVH_; ++g)
          std::memcpy(vl + start * cs + i * cb + g * ch, (const T*)b.vt.data_ptr() + (i * KVH_ + g) * hd_,
                      hd_ * sizeof(T));
      float* att = b.att.data_ptr<float>();
      if (kernel_attention) {
#ifdef WB_X86
        WB_ATTENTION(decode, (const T*)b.qr.data_ptr(), attn::Strides{H_ * hd_, hd_, 0}, (const T*)kl, (const T*)vl,
                     attn::Strides{cb, ch, cs}, mp, mb, ms, att, B, H_, KVH_, S, hd_, 1.0f / std::sqrt((float)hd_));
#endif
        // the layers round attention's output to T before the o product
        if (!std::is_same<T, float>::value)
          for (int64_t i = 0; i < n_att; ++i) att[i] = widen(narrow<T>(att[i]));
      } else {  // model.attention's one-query path: the query heads of a KV group along the query axis
        const at::Tensor keys = k_cache.select(0, l).narrow(2, 0, S), values = v_cache.select(0, l).narrow(2, 0, S);
        const at::Tensor a = at::scaled_dot_product_attention(b.qr.view({B, KVH_, groups, hd_}), keys, values, mask)
                                 .reshape({B, 1, H_ * hd_}).contiguous();
        widen_into((const T*)a.data_ptr(), att, n_att);
      }
      products({&layer.o}, b.att, {&b.d}, bf16);
      add_into<T>(x, b.d);
      norm_into<T>(x, layer.mlp_norm, eps_, b);
      products({&layer.gate, &layer.up}, b.hf, {&b.gate, &b.up}, bf16);
      silu_mul<T>(b.gate, b.up, b.act);
      products({&layer.down}, b.act, {&b.d}, bf16);
      add_into<T>(x, b.d);
    }
    return x;
  }

  std::vector<StackLayer> layers_;
  double eps_;
  int64_t H_, KVH_, hd_;
};
