// The weight-tile layout of the int8-activation kernels, and its builders (run once per layer).
// Compiled for AVX2 with F16C, which every CPU that runs tiles has; no AVX-512 code here, so the
// builders run on AVX2-only CPUs too.

#ifdef WB_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace tile_layout {

constexpr int64_t BLOCK = 32;  // weights per quantized block (and inputs per activation scale)

// Tiles: quantized blocks of 32 weights regrouped 16 output rows at a time, so that one 512-bit
// register (two 256-bit ones on AVX2) holds 4 weights of each of 16 rows and an integer dot product
// sums them against 4 inputs broadcast to every lane: the 16 dot products of a block come out in the
// lanes of one register, with no horizontal sums. This is the layout llama.cpp repacks Q4_0 into on
// AVX-512 CPUs. The kernels: gguf_q8.h (AVX-512 VNNI) and tiles_avx2.h. A tile-block of rows n0..n0+15 and block b
// holds d[16] and c[16] (float16 for GGUF blocks, c = -8d for Q4_0, exact; float32 for int4 layers,
// d = the group's scale, c = -scale * zero point), then four chunks of 64 bytes: chunk j, lane n =
// bytes 4j..4j+3 of the row's block in GGUF order (low nibbles: weights 4j..4j+3, high nibbles:
// weights 16+4j..16+4j+3). Rows past N are zero.
constexpr int64_t TILE = 16, TILE_NIBBLES = 256, TILE_BYTES = 512;
// The four layouts, by the bytes of one tile-block: 4-bit with float16 d and c, 4-bit with float32
// d and c, 8-bit with float32 d, 8-bit alone (the rows' scales apply after the sum; below).
enum TileKind { NIBBLES_F16 = 0, NIBBLES_F32 = 1, BYTES_F32 = 2, BYTES = 3 };
namespace tile_kinds { constexpr int BYTES = TileKind::BYTES; }  // where a local name shadows the enum
static constexpr int64_t tile_block_bytes(int kind) {
  return kind == BYTES ? TILE_BYTES
                       : kind == BYTES_F32 ? 64 + TILE_BYTES : (kind == NIBBLES_F32 ? 128 : 64) + TILE_NIBBLES;
}

static void make_tiles(int64_t type, const uint8_t* raw, int64_t N, int64_t K, uint8_t* out) {
  const int64_t blocks = K / BLOCK, bb = type == 1 ? 18 : 20, head = bb - 16, tiles = (N + TILE - 1) / TILE;
  const int64_t TILE_BLOCK = tile_block_bytes(NIBBLES_F16);
  std::memset(out, 0, tiles * blocks * TILE_BLOCK);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* blk = raw + (n * blocks + b) * bb;
      uint8_t* tb = out + ((n / TILE) * blocks + b) * TILE_BLOCK;
      const int lane = (int)(n % TILE);
      const uint16_t d = load_u16(blk);
      const uint16_t c = type == 1 ? _cvtss_sh(-8.0f * _cvtsh_ss(d), 0) : load_u16(blk + 2);
      std::memcpy(tb + 2 * lane, &d, 2);
      std::memcpy(tb + 32 + 2 * lane, &c, 2);
      for (int j = 0; j < 4; ++j) std::memcpy(tb + 64 + 64 * j + 4 * lane, blk + head + 4 * j, 4);
    }
}

// Int4WeightOnlyLinear rows (packed: byte j = inputs 2j, 2j+1, rows of Kp >= K inputs; group size G,
// a multiple of 32; K a multiple of 32, so a short last group holds whole blocks) as float32-header
// tiles of the K real inputs.
static void make_int4_tiles(const uint8_t* packed, const float* scale, const uint8_t* zero, int64_t N, int64_t K,
                            int64_t Kp, int64_t G, uint8_t* out) {
  const int64_t blocks = K / BLOCK, tiles = (N + TILE - 1) / TILE, TILE_BLOCK = tile_block_bytes(NIBBLES_F32);
  std::memset(out, 0, tiles * blocks * TILE_BLOCK);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* src = packed + n * (Kp / 2) + b * (BLOCK / 2);
      uint8_t* tb = out + ((n / TILE) * blocks + b) * TILE_BLOCK;
      const int lane = (int)(n % TILE);
      const int64_t g = n * (Kp / G) + b * BLOCK / G;
      const float d = scale[g], c = -scale[g] * (float)zero[g];
      std::memcpy(tb + 4 * lane, &d, 4);
      std::memcpy(tb + 64 + 4 * lane, &c, 4);
      for (int j = 0; j < 16; ++j) {  // weights j and 16 + j of the block into one byte
        const int lo = (src[j / 2] >> (4 * (j % 2))) & 15, hi = (src[(16 + j) / 2] >> (4 * (j % 2))) & 15;
        tb[128 + 64 * (j / 4) + 4 * lane + j % 4] = (uint8_t)(lo | (hi << 4));
      }
    }
}

// 8-bit tiles: Q8_0 blocks (w = d * q, q int8) or int8 rows with one scale each (w = scale * q).
// A Q8_0 tile-block holds d[16] as float32 (exact for float16), then eight chunks of 64 bytes: chunk
// j, lane n = weights 4j..4j+3 of the row's block, stored as q + 128 (vpdpbusd takes unsigned weights;
// the kernel subtracts 128 * sum(xq) from each integer dot product, which makes it exactly sum(q * xq)).
// An int8 tile-block is the eight chunks alone: the layer's own row scales multiply the finished sums.
static inline void put_tile8_row(uint8_t* tb, int lane, const int8_t* q) {
  for (int i = 0; i < BLOCK; ++i) tb[64 * (i / 4) + 4 * lane + i % 4] = (uint8_t)(q[i] ^ 0x80);
}

static void make_q8_0_tiles(const uint8_t* raw, int64_t N, int64_t K, uint8_t* out) {
  const int64_t blocks = K / BLOCK, tiles = (N + TILE - 1) / TILE, TILE_BLOCK = tile_block_bytes(BYTES_F32);
  std::memset(out, 0, tiles * blocks * TILE_BLOCK);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* blk = raw + (n * blocks + b) * 34;
      uint8_t* tb = out + ((n / TILE) * blocks + b) * TILE_BLOCK;
      const float d = _cvtsh_ss(load_u16(blk));
      std::memcpy(tb + 4 * (n % TILE), &d, 4);
      put_tile8_row(tb + 64, (int)(n % TILE), (const int8_t*)(blk + 2));
    }
}

static void make_int8_tiles(const int8_t* q, int64_t N, int64_t K, uint8_t* out) {
  const int64_t blocks = K / BLOCK, tiles = (N + TILE - 1) / TILE, TILE_BLOCK = tile_block_bytes(BYTES);
  std::memset(out, 0, tiles * blocks * TILE_BLOCK);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < blocks; ++b)
      put_tile8_row(out + ((n / TILE) * blocks + b) * TILE_BLOCK, (int)(n % TILE), q + n * K + b * BLOCK);
}

}  // namespace tile_layout
#pragma GCC pop_options
#endif
