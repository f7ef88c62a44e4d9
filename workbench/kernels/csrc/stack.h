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
      op.scale = tile_scales(tile_kind(op.w, op.in_features, op.out),
                             op.scaled ? c10::optional<at::Tensor>(t[4].cast<at::Tensor>()) : c10::nullopt, op.out);
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

// Products of the same float32 rows x. Dense ones (float32, bfloat16, int8 weights) share one
// parallel region, and so do products on weight tiles: the threads split all their output rows (or
// tiles) at once (q, k and v; gate and up), one fork and join where there would be one per matrix;
// the small k and v matrices take a few microseconds each, about what a fork and join of the threads
// costs. Tiles also round x to int8 once for the group.
static bool g_group_products = true;  // off: one parallel region per matrix (to measure the difference)

static std::vector<at::Tensor> products(std::initializer_list<const LinearOp*> ops, const at::Tensor& x) {
  std::vector<at::Tensor> out;
  const LinearOp::Kind first = (*ops.begin())->kind;
  bool grouped = g_group_products && (first == LinearOp::DENSE || first == LinearOp::TILES_Q8) && x.is_contiguous() &&
                 x.scalar_type() == at::kFloat;
  for (const LinearOp* op : ops) grouped = grouped && op->kind == first && op->in_features == x.size(-1);
  if (!grouped) {
    for (const LinearOp* op : ops) out.push_back((*op)(x));
    return out;
  }
  const int64_t K = x.size(-1), rows = x.numel() / K;
  for (const LinearOp* op : ops) out.push_back(new_output(x, op->out_features()));
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
    const RowsQ8 q(x, rows, K, true);
    int64_t tiles = 0;
    std::vector<int> kinds;
    for (const LinearOp* op : ops) kinds.push_back(tile_kind(op->w, K, op->out)), tiles += op->w.size(0);
    split(tiles, (*ops.begin())->w.size(1) * std::max<int64_t>(1, rows / 4), 1,
          [&](const LinearOp* op, int64_t i, int64_t t0, int64_t t1) {
            tiles_range(kinds[i], op->w, op->scale.defined() ? op->scale.data_ptr<float>() : nullptr, q, 0, rows,
                        out[i].data_ptr<float>(), op->out, K, t0, t1);
          });
    return out;
  }
  int64_t total = 0;
  for (const LinearOp* op : ops) total += op->out_features();
  const int64_t row_bytes = K * (*ops.begin())->w.element_size();
  for (int64_t m0 = 0; m0 < rows; m0 += 4) {
    const int M = (int)std::min<int64_t>(4, rows - m0);
    const float* xp = x.data_ptr<float>() + m0 * K;
    split(total, row_bytes, 4, [&](const LinearOp* op, int64_t i, int64_t n0, int64_t n1) {
      const int64_t N = op->out_features();
      dense_range(op->w, op->scaled ? op->scale.data_ptr<float>() : nullptr, xp, out[i].data_ptr<float>() + m0 * N,
                  M, n0, n1);
    });
  }
  return out;
}

struct StackLayer {
  at::Tensor attn_norm, mlp_norm;
  LinearOp q, k, v, o, gate, up, down;
};

// The products take and return float32 rows (the kernels' own arithmetic); between them the stack
// keeps the model's dtype T, rounding where PyTorch's bfloat16 operations round. These loops do the
// conversions that would otherwise be a dispatched `.to()` per product.
template <typename T>
static at::Tensor widened(const at::Tensor& t_) {  // float32 copy of a T tensor (t itself for float32)
  const at::Tensor t = t_.contiguous();
  if (std::is_same<T, float>::value) return t;
  at::Tensor out = at::empty(t.sizes(), t.options().dtype(at::kFloat));
  const T* src = (const T*)t.data_ptr();
  float* dst = out.data_ptr<float>();
  for (int64_t i = 0, n = t.numel(); i < n; ++i) dst[i] = widen(src[i]);
  return out;
}

template <typename T>
static at::Tensor rounded(const at::Tensor& y, const at::TensorOptions& options) {  // T copy of float32 y
  if (std::is_same<T, float>::value) return y;
  at::Tensor out = at::empty(y.sizes(), options);
  const float* src = y.data_ptr<float>();
  T* dst = (T*)out.data_ptr();
  for (int64_t i = 0, n = y.numel(); i < n; ++i) dst[i] = narrow<T>(src[i]);
  return out;
}

// x += round(d) (d a float32 product), rounded to T: the residual `x + o_proj(...)`.
template <typename T>
static void add_into(at::Tensor& x, const at::Tensor& d) {
  T* xp = (T*)x.data_ptr();
  const float* dp = d.data_ptr<float>();
  for (int64_t i = 0, n = x.numel(); i < n; ++i) xp[i] = narrow<T>(widen(xp[i]) + widen(narrow<T>(dp[i])));
}

// silu(g) * u of float32 products g, u, as F.silu(g) * u rounds each step in T; returned in float32
// for the down product (the value is T's). In float32 it is PyTorch's own silu (its vectorised exp
// and std::exp differ in the last bit), so a decode step computes what a prompt's layers compute.
template <typename T>
static at::Tensor silu_mul(const at::Tensor& g, const at::Tensor& u) {
  if constexpr (std::is_same<T, float>::value) return at::silu(g).mul_(u);
  at::Tensor out = at::empty_like(g);
  const float *gp = g.data_ptr<float>(), *up = u.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t i = 0, n = g.numel(); i < n; ++i) {
    const float a = widen(narrow<T>(gp[i]));
    op[i] = widen(narrow<T>(widen(narrow<T>(a / (1.0f + std::exp(-a)))) * widen(narrow<T>(up[i]))));
  }
  return out;
}

// RMSNorm of T rows, rounded to T as the reference does, in float32 for the products.
template <typename T>
static at::Tensor norm_for_products(const at::Tensor& x, const at::Tensor& weight, double eps) {
  return widened<T>(rms_norm(x, weight, eps));
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
    const int64_t B = x.size(0), groups = H_ / KVH_;
    const T *c = (const T*)cos.data_ptr(), *s = (const T*)sin.data_ptr();
    const bool kernel_attention = decode_attention_fits(hd_, groups);
    for (int64_t l = 0; l < (int64_t)layers_.size(); ++l) {
      const StackLayer& layer = layers_[l];
      at::Tensor h = norm_for_products<T>(x, layer.attn_norm, eps_);
      const std::vector<at::Tensor> qkv = products({&layer.q, &layer.k, &layer.v}, h);
      const at::Tensor q = rounded<T>(qkv[0], x.options()), k = rounded<T>(qkv[1], x.options());
      const at::Tensor v = rounded<T>(qkv[2], x.options());
      const at::Tensor kl = k_cache.select(0, l), vl = v_cache.select(0, l);
      at::Tensor qr = at::empty({B, H_, 1, hd_}, x.options());
      rope_rows<T>(q.view({B, H_, 1, hd_}), c, s, (T*)qr.data_ptr(), B, H_, hd_, H_ * hd_, hd_);
      T* kslot = (T*)kl.data_ptr() + start * kl.stride(2);
      rope_rows<T>(k.view({B, KVH_, 1, hd_}), c, s, kslot, B, KVH_, hd_, kl.stride(0), kl.stride(1));
      T* vslot = (T*)vl.data_ptr() + start * vl.stride(2);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t g = 0; g < KVH_; ++g)
          std::memcpy(vslot + b * vl.stride(0) + g * vl.stride(1), (const T*)v.data_ptr() + (b * KVH_ + g) * hd_,
                      hd_ * sizeof(T));
      const at::Tensor keys = kl.narrow(2, 0, start + 1), values = vl.narrow(2, 0, start + 1);
      at::Tensor att;
      if (kernel_attention) {
        att = decode_attention(qr, keys, values, mask);
      } else {  // model.attention's one-query path: the query heads of a KV group along the query axis
        att = at::scaled_dot_product_attention(qr.view({B, KVH_, groups, hd_}), keys, values, mask)
                  .reshape({B, 1, H_ * hd_});
      }
      add_into<T>(x, layer.o(widened<T>(att)));
      h = norm_for_products<T>(x, layer.mlp_norm, eps_);
      const std::vector<at::Tensor> gate_up = products({&layer.gate, &layer.up}, h);
      add_into<T>(x, layer.down(silu_mul<T>(gate_up[0], gate_up[1])));
    }
    return x;
  }

  std::vector<StackLayer> layers_;
  double eps_;
  int64_t H_, KVH_, hd_;
};
