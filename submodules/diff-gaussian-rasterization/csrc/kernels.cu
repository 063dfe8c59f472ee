// CUDA kernels of the STGA rasterizer. Written from scratch for STGA; the function computed is
// defined in the package README.
//
// Forward: preprocess (one thread per Gaussian; each warp then counts the tiles listing its
// Gaussians, and the last block lays out the per-tile lists) -> host sync on the entry count ->
// emission of the (depth key, Gaussian) entries into each tile's range, in no particular order ->
// per-tile sort by depth key, ties by index (in shared memory, chunks of kSortChunk; longer lists
// merge their runs) -> blending, one warp per 8x4 pixel patch, one thread per pixel, tiles with
// the longest lists first.
// Backward: blending in reverse per (patch, segment of the tile's list), per-pixel gradients
// summed over each warp and added to a per-Gaussian accumulator, then one thread per Gaussian for
// the chain rule to the inputs (started while the blending finishes, on sm_90).
#include <cub/block/block_radix_sort.cuh>

#include <algorithm>
#include <climits>
#include <type_traits>

#include "kernels.h"

namespace stga {

constexpr unsigned kFull = 0xffffffffu;

#define STGA_TRY(expr)                        \
  do {                                        \
    const cudaError_t e__ = (expr);           \
    if (e__ != cudaSuccess) return e__;       \
  } while (0)

inline int cdiv(int64_t a, int64_t b) { return (int)((a + b - 1) / b); }

// Calls f(integral_constant<int, D>, integral_constant<bool, VEC>) for the runtime (deg, vec).
template <class F>
void dispatch_sh(int deg, bool vec, F&& f) {
  using T = std::true_type;
  using N = std::false_type;
  switch (deg * 2 + (vec ? 1 : 0)) {
    case 0: f(std::integral_constant<int, 0>{}, N{}); break;
    case 1: f(std::integral_constant<int, 0>{}, T{}); break;
    case 2: f(std::integral_constant<int, 1>{}, N{}); break;
    case 3: f(std::integral_constant<int, 1>{}, T{}); break;
    case 4: f(std::integral_constant<int, 2>{}, N{}); break;
    case 5: f(std::integral_constant<int, 2>{}, T{}); break;
    case 6: f(std::integral_constant<int, 3>{}, N{}); break;
    default: f(std::integral_constant<int, 3>{}, T{}); break;
  }
}

inline bool use_vec(const Cam& cam, const GaussIn& in) {
  return in.shs != nullptr && cam.K % 4 == 0 && ((uintptr_t)in.shs % 16) == 0;
}

// ---------------------------------------------------------------------------------------------
// Tile lists.

// Rectangles of up to this many tiles are listed by their Gaussian's own lane. (Measured: 64, as
// many as are tested, made the preprocessing slower, 134 -> 145 us at 300k/1604x1100.)
constexpr int kLaneTiles = 8;

// Visits every tile that lists one of the warp's `active` Gaussians (rectangle and test constants
// in L): visit(tile, payload of that Gaussian's lane) runs on the lane that found the tile, which
// is the Gaussian's own lane for rectangles of up to LANE_TILES tiles, and any lane of the warp
// (spread over one Gaussian's tiles at a time) for larger ones. Returns the number of tiles
// visited by this lane's calls, counting the warp's shared work on lane 0, so that the sum over
// the warp is its total. Preprocessing and emission both list through here, so they agree.
template <int LANE_TILES, class Visit>
__device__ __forceinline__ int warp_list_tiles(bool active, const Listing& L, int cull, int grid_x,
                                               unsigned long long payload, Visit&& visit) {
  const int lane = threadIdx.x & 31;
  const int area = active ? L.area() : 0;
  int mine = 0;
  if (area > 0 && area <= LANE_TILES) {
    const bool test = tests_tiles(cull, area);
    for (int ty = L.y0; ty < L.y1; ++ty) {
      for (int tx = L.x0; tx < L.x1; ++tx) {
        if (!test || tile_hit(tx, ty, L.geo)) {
          visit(ty * grid_x + tx, payload);
          ++mine;
        }
      }
    }
  }
  int shared = 0;
  unsigned todo = __ballot_sync(kFull, area > LANE_TILES);
  while (todo) {
    const int b = __ffs(todo) - 1;
    todo &= todo - 1;
    const int x0 = __shfl_sync(kFull, L.x0, b), y0 = __shfl_sync(kFull, L.y0, b);
    const int x1 = __shfl_sync(kFull, L.x1, b), y1 = __shfl_sync(kFull, L.y1, b);
    const unsigned long long pb = __shfl_sync(kFull, payload, b);
    const int w = x1 - x0;
    const int n = w * (y1 - y0);
    const bool test = tests_tiles(cull, n);
    CullGeo g;
    if (test) {  // uniform over the warp
      g.px = __shfl_sync(kFull, L.geo.px, b);
      g.py = __shfl_sync(kFull, L.geo.py, b);
      g.A = __shfl_sync(kFull, L.geo.A, b);
      g.B = __shfl_sync(kFull, L.geo.B, b);
      g.C = __shfl_sync(kFull, L.geo.C, b);
      g.k = __shfl_sync(kFull, L.geo.k, b);
      g.b_over_c = __shfl_sync(kFull, L.geo.b_over_c, b);
      g.b_over_a = __shfl_sync(kFull, L.geo.b_over_a, b);
      g.ok = __shfl_sync(kFull, (int)L.geo.ok, b) != 0;
    }
    for (int t0 = 0; t0 < n; t0 += 32) {
      const int t = t0 + lane;
      bool ok = false;
      int tile = 0;
      if (t < n) {
        const int ty = y0 + t / w, tx = x0 + t % w;
        tile = ty * grid_x + tx;
        ok = !test || tile_hit(tx, ty, g);
      }
      if (ok) visit(tile, pb);
      shared += __popc(__ballot_sync(kFull, ok));
    }
  }
  return mine + (lane == 0 ? shared : 0);
}

// Exclusive scan of the K values v over the block (blockDim.x == 256); total gets the sums.
template <int K>
__device__ __forceinline__ void block_exclusive_scan(unsigned (&v)[K], unsigned (&total)[K]) {
  __shared__ unsigned s_warp[8][K];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned inc[K];
#pragma unroll
  for (int k = 0; k < K; ++k) inc[k] = v[k];
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const unsigned x = __shfl_up_sync(kFull, inc[k], off);
      if (lane >= off) inc[k] += x;
    }
  }
  if (lane == 31) {
#pragma unroll
    for (int k = 0; k < K; ++k) s_warp[warp][k] = inc[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) {
    unsigned before = 0, sum = 0;
#pragma unroll
    for (int w = 0; w < 8; ++w) {
      before += w < warp ? s_warp[w][k] : 0u;
      sum += s_warp[w][k];
    }
    v[k] = before + inc[k] - v[k];
    total[k] = sum;
  }
  __syncthreads();  // s_warp is reused by the next call
}

// Tiles are blended longest list first, so that the long lists (silhouette tiles) do not start
// last and set the kernel's tail. Lengths are ordered coarsely, by classes of two per octave:
// 0 for an empty list, then 1, 2, 3, [4, 6), [6, 8), [8, 12), ...
constexpr int kLengthClasses = 64;
__device__ __forceinline__ int length_class(unsigned n) {
  if (n < 2u) return (int)n;
  const int msb = 31 - __clz(n);
  return 2 * msb + (int)((n >> (msb - 1)) & 1u);
}

// Adds 1 to counter[cls] for each lane of the warp with cls >= 0 (shared-memory counters, one
// atomic per distinct class) and returns the lane's old value plus its rank among the lanes of
// its class. Called by all 32 lanes.
__device__ __forceinline__ unsigned warp_increment(unsigned* counter, int cls) {
  const int lane = threadIdx.x & 31;
  const unsigned peers = __match_any_sync(kFull, cls);
  const int leader = __ffs(peers) - 1;
  unsigned base = 0;
  if (lane == leader && cls >= 0) base = atomicAdd(&counter[cls], (unsigned)__popc(peers));
  base = __shfl_sync(kFull, base, leader);
  return base + (unsigned)__popc(peers & ((1u << lane) - 1u));
}

// Checkpoint slots of a list of n entries: one per segment boundary inside it (positions k seg,
// 0 < k seg < n).
__device__ __forceinline__ unsigned ckpt_slots_of(unsigned n, int seg) {
  return n > 0 ? (n - 1u) / (unsigned)seg : 0u;
}

// Run by the preprocessing's last block (256 threads), once every tile's count is in its cursor:
// each tile's range and its cursor set to its start (the emission advances the cursors), the
// list of long tiles, each tile's first checkpoint slot, the order of the tiles by list length
// (for the sort and the blending), ListStats (but entries; also to l.host_stats if set), and
// its go flag (whether the lists fit `guess`, when `guessed`; the long tiles' list is then
// padded with -1 up to guess.merge_tiles). Unsigned sums: if there are more than 2^31
// entries the host stops before using any of this.
__device__ void layout_lists(int T, int seg, const TileLists& l, const ListPlan& guess,
                             bool guessed) {
  constexpr int kItems = 8;
  __shared__ unsigned s_class[kLengthClasses];  // tiles per class, then the class's next slot
  for (int c = threadIdx.x; c < kLengthClasses; c += blockDim.x) s_class[c] = 0u;
  __syncthreads();
  // Each tile's length class, kept for the order below (when there are at most kKeptClasses
  // tiles; else the order reads the lengths back from the ranges).
  constexpr int kKeptClasses = 8192;
  __shared__ unsigned char s_tile_class[kKeptClasses];
  static_assert(kLengthClasses <= 256, "classes fit a byte");
  // entries, non-empty tiles, long tiles, long entries, checkpoint slots
  unsigned carry[5] = {0u, 0u, 0u, 0u, 0u};
  unsigned alt[kSegChoices] = {0u, 0u, 0u, 0u};  // checkpoint slots with each choice
  int longest = 0;
  for (int base = 0; base < T; base += 256 * kItems) {
    const int first = base + threadIdx.x * kItems;
    unsigned c[kItems];
    unsigned at[5] = {0u, 0u, 0u, 0u, 0u};
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      c[k] = first + k < T ? (unsigned)__ldcg(&l.cursors[(size_t)(first + k) * kCursorStride])
                           : 0u;
      const bool is_long = c[k] > (unsigned)kSortChunk;
      at[0] += c[k];
      at[1] += c[k] > 0 ? 1u : 0u;
      at[2] += is_long ? 1u : 0u;
      at[3] += is_long ? c[k] : 0u;
      at[4] += ckpt_slots_of(c[k], seg);
#pragma unroll
      for (int q = 0; q < kSegChoices; ++q) alt[q] += ckpt_slots_of(c[k], segment_choice(q));
      longest = max(longest, (int)c[k]);
    }
    unsigned total[5];
    block_exclusive_scan<5>(at, total);
#pragma unroll
    for (int k = 0; k < 5; ++k) at[k] += carry[k];
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int t = first + k;
      const int cls = t < T ? length_class(c[k]) : -1;
      warp_increment(s_class, cls);
      if (t >= T) continue;
      if (t < kKeptClasses) s_tile_class[t] = (unsigned char)cls;
      l.ranges[t] = make_int2((int)at[0], (int)(at[0] + c[k]));
      l.cursors[(size_t)t * kCursorStride] = (int)at[0];
      at[0] += c[k];
      l.ckpt_base[t] = (int)at[4];
      at[4] += ckpt_slots_of(c[k], seg);
      if (c[k] > (unsigned)kSortChunk) {
        l.long_tiles[at[2]] = t;
        l.long_offset[at[2]++] = (int)at[3];
        at[3] += c[k];
      }
    }
#pragma unroll
    for (int k = 0; k < 5; ++k) carry[k] += total[k];
  }
  __shared__ int s_max[8];
  __shared__ unsigned s_alt[8][kSegChoices];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    longest = max(longest, __shfl_xor_sync(kFull, longest, off));
#pragma unroll
    for (int q = 0; q < kSegChoices; ++q) alt[q] += __shfl_xor_sync(kFull, alt[q], off);
  }
  if ((threadIdx.x & 31) == 0) {
    s_max[threadIdx.x >> 5] = longest;
#pragma unroll
    for (int q = 0; q < kSegChoices; ++q) s_alt[threadIdx.x >> 5][q] = alt[q];
  }
  __syncthreads();  // also: s_class holds every tile, and this block's ranges are visible
  if (threadIdx.x == 0) {
    for (int w = 1; w < 8; ++w) longest = max(longest, s_max[w]);
    for (int q = 0; q < kSegChoices; ++q) {
      unsigned a = 0u;
      for (int w = 0; w < 8; ++w) a += s_alt[w][q];
      l.stats->ckpt_slots_at[q] = (int)a;
    }
    l.stats->nonempty = (int)carry[1];
    l.stats->num_long = (int)carry[2];
    l.stats->long_entries = (int)carry[3];
    l.stats->longest = longest;
    l.stats->ckpt_slots = (int)carry[4];
    ListStats h = *l.stats;
    h.entries = __ldcg(&l.stats->entries);  // every block's entries are in (the caller's fences)
    h.go = guessed ? (plan_fits(h, guess) ? 1 : 0) : 1;
    l.stats->go = h.go;
    if (l.host_stats != nullptr) *l.host_stats = h;
  }
  if (guessed) {  // the guessed merge grid's extra blocks find -1 and stop
    const int pad_end = min(T, guess.merge_tiles);
    for (int k = (int)carry[2] + threadIdx.x; k < pad_end; k += blockDim.x) l.long_tiles[k] = -1;
  }
  if (threadIdx.x < 32) {  // each class's first slot in the order: classes in decreasing order
    static_assert(kLengthClasses == 64, "two classes per lane");
    const int lane = threadIdx.x, hi = kLengthClasses - 1 - 2 * lane, lo = hi - 1;
    const unsigned n_hi = s_class[hi], n_lo = s_class[lo];
    unsigned inc = n_hi + n_lo;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const unsigned x = __shfl_up_sync(kFull, inc, off);
      if (lane >= off) inc += x;
    }
    const unsigned before = inc - n_hi - n_lo;
    s_class[hi] = before;
    s_class[lo] = before + n_hi;
  }
  __syncthreads();
  const bool kept = T <= kKeptClasses;
  for (int base = 0; base < T; base += 256) {
    const int t = base + threadIdx.x;
    int cls = -1;
    if (t < T) {
      if (kept) {
        cls = s_tile_class[t];
      } else {
        const int2 r = l.ranges[t];
        cls = length_class((unsigned)(r.y - r.x));
      }
    }
    const unsigned slot = warp_increment(s_class, cls);
    if (t < T) l.order[slot] = t;
  }
}

// Sorting one chunk of a tile's list (at most kSortChunk entries) in a block: a stable radix sort
// of the depth keys (only the bits that vary within the chunk), carrying the Gaussian indices.
// Equal depths are then put in index order (below).
constexpr int kSortThreads = 256;
constexpr int kTiePasses = 64;  // ties in a chunk beyond this bound take the two extra sorts
static_assert(kSortChunk == 4 * kSortThreads, "chunks: up to 4 entries per thread");
template <int ITEMS>
using ChunkRadixSort = cub::BlockRadixSort<unsigned, kSortThreads, ITEMS, unsigned>;
union ChunkSortStorage {
  typename ChunkRadixSort<1>::TempStorage items1;
  typename ChunkRadixSort<4>::TempStorage items4;
  struct {
    unsigned key[kSortChunk];  // depth bits minus the chunk's smallest
    unsigned idx[kSortChunk];
  } out;
};

// Sorts the `len` entries at src into s.out (key relative to *key_min, which is set here).
template <int ITEMS>
__device__ void sort_chunk(const unsigned long long* __restrict__ src, int len,
                           ChunkSortStorage& s, unsigned* key_min, unsigned* key_max) {
  using Sort = ChunkRadixSort<ITEMS>;
  auto& temp = reinterpret_cast<typename Sort::TempStorage&>(s);
  unsigned k[ITEMS], v[ITEMS];
  unsigned lo = 0xffffffffu, hi = 0u;
  if (threadIdx.x == 0) {
    *key_min = 0xffffffffu;
    *key_max = 0u;
  }
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int p = threadIdx.x * ITEMS + i;
    if (p < len) {
      const unsigned long long e = src[p];
      k[i] = (unsigned)(e >> 32);
      v[i] = (unsigned)e;
      lo = min(lo, k[i]);
      hi = max(hi, k[i]);
    } else {  // padding: sorts after every entry (stable sort, larger or equal key, later)
      k[i] = 0xffffffffu;
      v[i] = 0xffffffffu;
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    lo = min(lo, __shfl_xor_sync(kFull, lo, off));
    hi = max(hi, __shfl_xor_sync(kFull, hi, off));
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) {
    atomicMin(key_min, lo);
    atomicMax(key_max, hi);
  }
  __syncthreads();
  const unsigned kmin = *key_min, range = *key_max - kmin;
  const int bits = range == 0 ? 0 : 32 - __clz(range);
#pragma unroll
  for (int i = 0; i < ITEMS; ++i)
    if (threadIdx.x * ITEMS + i < len) k[i] -= kmin;
  if (bits > 0) {
    Sort(temp).Sort(k, v, 0, bits);
    __syncthreads();  // the sort's storage becomes s.out
  }
  auto store = [&] {  // the sorted entries to s.out (the block's threads hold them in order)
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int p = threadIdx.x * ITEMS + i;
      if (p < len) {
        s.out.key[p] = k[i];
        s.out.idx[p] = v[i];
      }
    }
    __syncthreads();
  };
  store();
  // Runs of equal keys are still in emission order, which is arbitrary. They are common (depths
  // that round to the same float: a few per long chunk) and short, so an odd-even transposition
  // pass over the equal neighbours, repeated as many times as the longest run can be long, puts
  // them in index order. Many ties (clones) take two more stable sorts instead.
  int ties = 0;
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int p = threadIdx.x * ITEMS + i;
    if (p > 0 && p < len && s.out.key[p] == s.out.key[p - 1]) ++ties;
  }
  const int tie_threads = __syncthreads_count(ties > 0);
  if (tie_threads == 0) return;
  const int passes = tie_threads * ITEMS + 1;  // bounds the longest run
  if (passes <= kTiePasses) {
    for (int pass = 0; pass < passes; ++pass) {
      for (int p = 2 * threadIdx.x + (pass & 1); p + 1 < len; p += 2 * kSortThreads) {
        const unsigned a = s.out.idx[p], b = s.out.idx[p + 1];
        if (a > b && s.out.key[p] == s.out.key[p + 1]) {
          s.out.idx[p] = b;
          s.out.idx[p + 1] = a;
        }
      }
      __syncthreads();
    }
    return;
  }
  Sort(temp).Sort(v, k, 0, 32);  // by index ...
  __syncthreads();
  if (bits > 0) {
    Sort(temp).Sort(k, v, 0, bits);  // ... then stably by depth
    __syncthreads();
  }
  store();
}

// Number of elements of the sorted a[0, n) below key.
__device__ __forceinline__ int lower_bound(const unsigned long long* a, int n,
                                           unsigned long long key) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] < key) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// ---------------------------------------------------------------------------------------------
// Per-Gaussian kernels.

// A warp's SH rows in shared memory: `rows` rows of R4 float4s, contiguous in global memory and
// S4 float4s apart in shared memory (S4 odd: a lane's float4 accesses to its own row are then free
// of bank conflicts). All 32 lanes call these; each global access of the warp is one contiguous
// span, where a lane reading its own row touches one sector per lane per float4.
template <int R4, int S4>
__device__ __forceinline__ void rows_to_shared(const float4* __restrict__ src, float4* dst,
                                               int rows, int lane) {
  float4 v[R4];
#pragma unroll
  for (int q = 0; q < R4; ++q)
    if (q * 32 + lane < rows * R4) v[q] = src[q * 32 + lane];
#pragma unroll
  for (int q = 0; q < R4; ++q) {
    const int f = q * 32 + lane;
    if (f < rows * R4) dst[(f / R4) * S4 + f % R4] = v[q];
  }
}
template <int R4, int S4>
__device__ __forceinline__ void rows_from_shared(const float4* src, float4* __restrict__ dst,
                                                 int rows, int lane) {
#pragma unroll
  for (int q = 0; q < R4; ++q) {
    const int f = q * 32 + lane;
    if (f < rows * R4) dst[f] = src[(f / R4) * S4 + f % R4];
  }
}

// SH rows moved through shared memory: rows that hold exactly the coefficients used
// (K = (D+1)^2) in whole float4s (degrees 1 and 3, VEC), R4 float4s each, S4 apart.
template <int D, bool VEC>
struct ShStaging {
  static constexpr int kNB = (D + 1) * (D + 1);
  static constexpr bool kAble = VEC && D >= 1 && (3 * kNB) % 4 == 0;
  static constexpr int kR4 = kAble ? 3 * kNB / 4 : 1;
  static constexpr int kS4 = kR4 % 2 ? kR4 : kR4 + 1;
  static __device__ __forceinline__ bool on(const Cam& cam) { return kAble && cam.K == kNB; }
};

// The preprocessing also counts each tile's entries (its cursor) and the total (stats->entries,
// one 64-bit integer atomic per block, so exact and order-free); its last block lays out the
// lists. (Its SH rows moved through shared memory as in preprocess_bwd_kernel: 133.5 -> 130.0
// us at 300k/1604x1100, no change at 100k/802x550; not kept.)
template <int D, bool VEC>
__global__ void __launch_bounds__(256)
preprocess_fwd_kernel(int N, Cam cam, GaussIn in, PreOut out, TileLists lists, ListPlan guess,
                      bool guessed) {
  __shared__ unsigned s_sum[256 / 32];
  __shared__ bool s_last;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  Listing L{};
  bool listed = false;
  if (i < N) {
    listed = preprocess_forward_one<D, VEC>(i, cam, in, out, L);
    reinterpret_cast<ushort4*>(out.rect)[i] =
        listed ? make_ushort4((uint16_t)L.x0, (uint16_t)L.y0, (uint16_t)L.x1, (uint16_t)L.y1)
               : make_ushort4(0, 0, 0, 0);
  }
  const int n = warp_list_tiles<kLaneTiles>(listed, L, cam.cull, cam.grid_x, 0ull,
                                [&](int tile, unsigned long long) {
                                  atomicAdd(&lists.cursors[(size_t)tile * kCursorStride], 1);
                                });
  unsigned wn = (unsigned)n;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) wn += __shfl_xor_sync(kFull, wn, off);
  if ((threadIdx.x & 31) == 0) s_sum[threadIdx.x >> 5] = wn;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long b = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) b += s_sum[w];
    if (b) atomicAdd(&lists.stats->entries, b);
  }
  // The last block to finish (threadFenceReduction pattern) lays out the lists.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(lists.blocks_done, 1u) == gridDim.x - 1;
  __syncthreads();
  if (s_last) {
    __threadfence();
    layout_lists(cam.grid_x * cam.grid_y, cam.seg, lists, guess, guessed);
  }
}

// Programmatic dependent launch (sm_90): a kernel launched with the attribute may start while the
// previous kernel in the stream is still running; wait_for_previous_kernel() returns once that
// kernel has finished and its writes are visible. The previous kernel lets it start early with
// allow_next_kernel(). Without the attribute (or before sm_90) both are no-ops.
__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void allow_next_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// 6 blocks of 128 per SM (80 registers): 100k Gaussians in one wave on 132 SMs.
constexpr int kPreBwdThreads = 128, kPreBwdBlocks = 6;

// Launched as a dependent of the blending pass: its blocks recompute the forward's quantities
// while the last blending warps finish (on SMs they leave free), then wait for the accumulated
// gradients. Nothing is written before that wait (the gradients' memory may be what the blending
// pass is still reading: the forward's buffers, released before the gradients were allocated).
// When the SH rows hold exactly the coefficients used (K = (D+1)^2, whole float4s), each warp
// moves its Gaussians' rows into shared memory first and the rows of their gradients out at the
// end (with each lane reading and writing its own 192-byte rows, ncu counted 59% of the
// kernel's sectors as excess).
template <int D, bool VEC>
__global__ void __launch_bounds__(kPreBwdThreads, kPreBwdBlocks)
preprocess_bwd_kernel(int N, Cam cam, GaussIn in, const int* __restrict__ radii,
                      const float* __restrict__ acc, GaussGrad g) {
  using Stg = ShStaging<D, VEC>;
  __shared__ float4 rows[Stg::kAble ? kPreBwdThreads * Stg::kS4 : 1];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x & 31;
  const int first = i - lane;                    // the warp's first Gaussian
  const int nrows = min(32, N - first);          // the warp's Gaussians (<= 0: none)
  const bool staged = Stg::on(cam);
  const float* sh_row = in.shs ? in.shs + (size_t)i * cam.K * 3 : nullptr;
  float* gsh_row = g.shs ? g.shs + (size_t)i * cam.K * 3 : nullptr;
  float4* warp_rows = rows + (threadIdx.x - lane) * Stg::kS4;
  if (staged) {
    if (nrows > 0)
      rows_to_shared<Stg::kR4, Stg::kS4>(
          reinterpret_cast<const float4*>(in.shs + (size_t)first * Stg::kNB * 3), warp_rows,
          nrows, lane);
    __syncwarp();
    gsh_row = reinterpret_cast<float*>(warp_rows + lane * Stg::kS4);
    sh_row = gsh_row;
  }
  if (i < N)
    preprocess_backward_one<D, VEC>(i, cam, in, radii, acc, sh_row, gsh_row, g,
                                    wait_for_previous_kernel);
  else
    wait_for_previous_kernel();  // every lane, before the warp's stores below
  if (staged) {
    __syncwarp();
    if (nrows > 0)
      rows_from_shared<Stg::kR4, Stg::kS4>(
          warp_rows, reinterpret_cast<float4*>(g.shs + (size_t)first * Stg::kNB * 3), nrows,
          lane);
  }
}

// Each listed Gaussian's entries (depth key << 32 | index) go to the tiles listing it, at the
// positions the tiles' atomic cursors hand out.
__global__ void __launch_bounds__(256)
emit_kernel(int N, int grid_x, int cull, const ushort4* __restrict__ rect,
            const uint32_t* __restrict__ depth_key, const float2* __restrict__ xy,
            const float4* __restrict__ conic_o, const float4* __restrict__ rgb,
            int* __restrict__ cursors, const int* __restrict__ go,
            unsigned long long* __restrict__ keys) {
  if (go != nullptr && __ldg(go) == 0) return;  // a guessed plan that the lists do not fit
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  Listing L{};
  bool listed = false;
  unsigned long long key = 0;
  if (i < N) {
    const ushort4 r = rect[i];
    L.x0 = r.x; L.y0 = r.y; L.x1 = r.z; L.y1 = r.w;
    listed = L.area() > 0;
    if (listed) {
      key = ((unsigned long long)depth_key[i] << 32) | (unsigned)i;
      if (tests_tiles(cull, L.area())) {
        const float2 p = xy[i];
        const float4 co = conic_o[i];
        L.geo = make_cull_geo(p.x, p.y, co.x, co.y, co.z, rgb[i].w);
      }
    }
  }
  warp_list_tiles<kLaneTiles>(listed, L, cull, grid_x, key, [&](int tile, unsigned long long k) {
    keys[atomicAdd(&cursors[(size_t)tile * kCursorStride], 1)] = k;
  });
}

// Block b sorts chunks b % slots, + slots, ... of the list of the (b / slots)-th tile of `order`
// (longest lists first, so that the blocks of the long lists, which take longest, start first).
// A list of one chunk goes straight to point_list; longer lists are written back as sorted runs
// for merge_runs_kernel.
__global__ void __launch_bounds__(kSortThreads)
sort_chunks_kernel(const int* __restrict__ go, const int* __restrict__ order, int slots,
                   const int2* __restrict__ ranges, unsigned long long* __restrict__ keys,
                   int* __restrict__ point_list) {
  __shared__ ChunkSortStorage s;
  __shared__ unsigned key_min, key_max;
  // (the blocks of a guessed plan's extra tiles find empty lists: the order ends with those)
  if (go != nullptr && __ldg(go) == 0) return;
  const int2 r = ranges[order[blockIdx.x / slots]];
  const int n = r.y - r.x;
  for (int c = blockIdx.x % slots; (long long)c * kSortChunk < n; c += slots) {
    const int off = r.x + c * kSortChunk;
    const int len = min(kSortChunk, n - c * kSortChunk);
    if (len <= kSortThreads) {
      sort_chunk<1>(keys + off, len, s, &key_min, &key_max);
    } else {
      sort_chunk<4>(keys + off, len, s, &key_min, &key_max);
    }
    if (n <= kSortChunk) {
      for (int q = threadIdx.x; q < len; q += kSortThreads) point_list[off + q] = (int)s.out.idx[q];
    } else {
      const unsigned kmin = key_min;
      for (int q = threadIdx.x; q < len; q += kSortThreads)
        keys[off + q] = ((unsigned long long)(s.out.key[q] + kmin) << 32) | s.out.idx[q];
    }
    __syncthreads();  // s is reused by the next chunk
  }
}

// One merge pass over the long tiles (long_tiles[blockIdx.x]): runs of `run` sorted entries are
// merged in pairs, each entry going to its index in its run plus its rank in the sibling run
// (keys are unique). src/dst are indexed by list position when *_in_keys, else from the tile's
// merge-buffer offset; the last pass writes the Gaussian indices to point_list instead of dst.
__global__ void __launch_bounds__(256)
merge_runs_kernel(const int* __restrict__ go, const int* __restrict__ long_tiles,
                  const int* __restrict__ long_offset, const int2* __restrict__ ranges, int run,
                  const unsigned long long* __restrict__ src, bool src_in_keys,
                  unsigned long long* __restrict__ dst, bool dst_in_keys,
                  int* __restrict__ point_list) {
  if (go != nullptr && __ldg(go) == 0) return;
  const int tile = long_tiles[blockIdx.x];
  if (tile < 0) return;  // padding for a guessed plan's extra blocks
  const int2 r = ranges[tile];
  const int n = r.y - r.x;
  const unsigned long long* a = src + (src_in_keys ? r.x : long_offset[blockIdx.x]);
  for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < n; i += gridDim.y * blockDim.x) {
    const unsigned long long key = a[i];
    const int q = i / run;
    const long long sib = (long long)(q ^ 1) * run;
    int rank = 0;
    if (sib < n) rank = lower_bound(a + sib, (int)min((long long)run, n - sib), key);
    const int out = (q & ~1) * run + (i - q * run) + rank;
    if (point_list != nullptr) {
      point_list[r.x + out] = (int)(unsigned)key;
    } else {
      dst[(dst_in_keys ? r.x : long_offset[blockIdx.x]) + out] = key;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Blending work units. Each 16x16 tile is blended by 8 independent warps (one-warp blocks), each
// owning an 8x4 pixel patch and traversing the tile's whole list. Small blocks spread a busy tile
// over several SMs (the long lists of silhouette tiles bounded the kernels' time), every patch
// stops as soon as its own pixels are done, and each patch drops the list entries whose
// alpha >= 1/255 ellipse misses it while staging them (box_hit: conservative, so the result is
// the same as without the test).
//
// The backward is split further, along the list: the forward records every pixel's transmittance
// and the colour behind it at each seg-th position of its tile's list (a checkpoint), so that
// each (patch, segment of seg positions) is an independent backward work item. The forward also
// appends each patch's items to a work list, which persistent backward warps drain.
constexpr int kPatchW = 8, kPatchH = 4;                       // pixels of one blending warp
constexpr int kPatchesX = kTile / kPatchW, kPatchesY = kTile / kPatchH;
constexpr int kStage = 32;                                    // list entries staged per round
static_assert(kPatchW * kPatchH == 32 && kStage == 32, "one pixel and one entry per lane");
static_assert(kPatchesX * kPatchesY == kPatchesPerTile, "patch layout");

// This lane's pixel, its patch (cut to the image) and the tile's range [range.x, range.y) of
// point_list. w or h <= 0 when the whole patch lies outside the image.
struct Patch {
  int x0, y0, w, h;
  int x, y;
  int tile;
  int tpix;       // the pixel's index in its tile (checkpoint layout)
  bool inside;
  float cx, cy;
  int2 range;
};

// Patch (px, py) of the image's grid of patches (grid_x tiles per row).
__device__ __forceinline__ Patch patch_at(int lane, int px, int py, int grid_x, int W, int H,
                                          const int2* __restrict__ ranges) {
  Patch p;
  p.x0 = px * kPatchW;
  p.y0 = py * kPatchH;
  p.w = min(kPatchW, W - p.x0);
  p.h = min(kPatchH, H - p.y0);
  const int lx = lane % kPatchW, ly = lane / kPatchW;
  p.x = p.x0 + lx;
  p.y = p.y0 + ly;
  p.tile = (py / kPatchesY) * grid_x + px / kPatchesX;
  p.tpix = ((py % kPatchesY) * kPatchH + ly) * kTile + (px % kPatchesX) * kPatchW + lx;
  p.inside = p.x < W && p.y < H;
  p.cx = (float)p.x + 0.5f;
  p.cy = (float)p.y + 0.5f;
  p.range = (p.w > 0 && p.h > 0) ? ranges[p.tile] : make_int2(0, 0);
  return p;
}

// One list entry in a lane's registers on its way to the warp's shared stage.
struct Candidate {
  int id;  // Gaussian, -1 for none
  float2 xy;
  float4 co, rgb;
};

struct StageArrays {
  const int* __restrict__ point_list;
  const float2* __restrict__ xy;
  const float4* __restrict__ conic_o;
  const float4* __restrict__ rgb;
};

__device__ __forceinline__ Candidate fetch(int id, const StageArrays& a) {
  Candidate c;
  c.id = id;
  if (id >= 0) {
    c.xy = a.xy[id];
    c.co = a.conic_o[id];
    c.rgb = a.rgb[id];
  } else {
    c.xy = make_float2(0.f, 0.f);
    c.co = c.rgb = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  return c;
}

// The entries of one round, in list order: those whose ellipse reaches the patch.
struct Stage {
  float2 xy[kStage];
  float4 co[kStage];
  float4 rgb[kStage];
  int pos[kStage];   // position in the tile's list
  int id[kStage];
};

// Writes the lanes' candidates that reach the patch to `s`, in lane order; returns their number.
__device__ __forceinline__ int stage_commit(Stage& s, const Candidate& c, int pos, const Patch& p,
                                            int cull, int lane) {
  bool keep = c.id >= 0;
  if (keep && cull)
    keep = box_hit(p.x0, p.y0, p.w, p.h,
                   make_cull_geo(c.xy.x, c.xy.y, c.co.x, c.co.y, c.co.z, c.rgb.w));
  const unsigned m = __ballot_sync(kFull, keep);
  __syncwarp();  // the previous round's reads of `s` are complete
  if (keep) {
    const int k = __popc(m & ((1u << lane) - 1u));
    s.xy[k] = c.xy;
    s.co[k] = c.co;
    s.rgb[k] = c.rgb;
    s.pos[k] = pos;
    s.id[k] = c.id;
  }
  __syncwarp();
  return __popc(m);
}

__device__ __forceinline__ int warp_max(int v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = max(v, __shfl_xor_sync(kFull, v, off));
  return v;
}

// Where pixel tpix of a tile keeps its checkpoint k >= 1 (list position k seg), given the tile's
// first slot (TileLists::ckpt_base).
__device__ __forceinline__ size_t ckpt_index(int first_slot, int k, int tpix) {
  return (size_t)(first_slot + k - 1) * kBlockPixels + tpix;
}

constexpr int kFwdGroup = 4;   // Gaussians whose alphas are computed together (latency hiding)

// Block b blends patch b % 8 of the (b / 8)-th tile of the blending order (longest lists
// first). Rounds are software-pipelined: while a round is blended, the next round's Gaussians and
// the list indices of the one after are already being loaded.
__global__ void __launch_bounds__(32)
render_fwd_kernel(int W, int H, int grid_x, int cull, int seg, const int* __restrict__ go,
                  const int2* __restrict__ ranges,
                  const int* __restrict__ order, StageArrays arr, const float* __restrict__ bg,
                  float* __restrict__ out_color, float* __restrict__ out_T,
                  int* __restrict__ out_last, BwdSplit split) {
  __shared__ Stage s;
  if (go != nullptr && __ldg(go) == 0) return;
  const int lane = threadIdx.x;
  const int slot = blockIdx.x / kPatchesPerTile, sub = blockIdx.x % kPatchesPerTile;
  const int tile = order != nullptr ? order[slot] : slot;
  const int px = (tile % grid_x) * kPatchesX + sub % kPatchesX;
  const int py = (tile / grid_x) * kPatchesY + sub / kPatchesX;
  const Patch p = patch_at(lane, px, py, grid_x, W, H, ranges);
  if (p.w <= 0 || p.h <= 0) return;

  bool done = !p.inside;
  float T = 1.f, C0 = 0.f, C1 = 0.f, C2 = 0.f;
  int last = 0, nck = 0;
  const int begin = p.range.x, end = p.range.y;
  const int first_slot = split.ckpt != nullptr ? split.ckpt_base[tile] : 0;
  auto index_at = [&](int base) { return base + lane < end ? arr.point_list[base + lane] : -1; };
  Candidate cur = fetch(index_at(begin), arr);
  int next_id = index_at(begin + kStage);
  for (int base = begin; base < end; base += kStage) {
    if (__all_sync(kFull, done)) break;
    if (split.ckpt != nullptr && base != begin && (base - begin) % seg == 0) {
      ++nck;
      if (p.inside) split.ckpt[ckpt_index(first_slot, nck, p.tpix)] = make_float4(T, C0, C1, C2);
    }
    const int n = stage_commit(s, cur, base - begin + lane, p, cull, lane);
    cur = fetch(next_id, arr);
    next_id = index_at(base + 2 * kStage);
    for (int j = 0; !done && j < n; j += kFwdGroup) {
      float al[kFwdGroup];
#pragma unroll
      for (int k = 0; k < kFwdGroup; ++k) {
        al[k] = 0.f;
        if (j + k < n) {
          const float2 q = s.xy[j + k];
          const float4 co = s.co[j + k];
          float G, raw;
          al[k] = blend_alpha(co.x, co.y, co.z, co.w, p.cx - q.x, p.cy - q.y, G, raw);
        }
      }
#pragma unroll
      for (int k = 0; k < kFwdGroup; ++k) {
        if (!done && al[k] > 0.f) {
          const float Tn = T * (1.f - al[k]);
          if (Tn < kTMin) {
            done = true;
          } else {
            const float4 c = s.rgb[j + k];
            const float w = al[k] * T;
            C0 += w * c.x;
            C1 += w * c.y;
            C2 += w * c.z;
            T = Tn;
            last = s.pos[j + k] + 1;
          }
        }
      }
    }
  }
  if (p.inside) {
    const int pix = p.y * W + p.x;
    const int HW = H * W;
    const float F0 = C0 + T * bg[0], F1 = C1 + T * bg[1], F2 = C2 + T * bg[2];
    out_color[pix] = F0;
    out_color[HW + pix] = F1;
    out_color[2 * HW + pix] = F2;
    out_T[pix] = T;
    out_last[pix] = last;
    // checkpoints: (T, colour accumulated in front) -> (T, colour behind, per unit transmittance)
    for (int k = 1; k <= nck; ++k) {
      const size_t q = ckpt_index(first_slot, k, p.tpix);
      const float4 c = split.ckpt[q];
      const float inv = 1.f / c.x;
      split.ckpt[q] = make_float4(c.x, (F0 - c.y) * inv, (F1 - c.z) * inv, (F2 - c.w) * inv);
    }
  }
  if (split.work != nullptr) {
    const int max_last = warp_max(last);
    if (max_last > 0) {
      const int nseg = (max_last + seg - 1) / seg;
      int at = 0;
      if (lane == 0) at = atomicAdd(split.counters, nseg);
      at = __shfl_sync(kFull, at, 0);
      const int patch = py * grid_x * kPatchesX + px;
      for (int q = lane; q < nseg; q += 32) split.work[at + q] = make_int2(patch, q);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Warp sum of many values by transposition: each step halves the values a lane holds by
// exchanging half of them with the partner lane (xor OFF) and adding. After the 5 steps a lane
// holds complete warp sums of (at most) ceil(V/32) of the V values; xpose_origin says which.
template <int V, int OFF>
__device__ __forceinline__ void xpose_step(const float (&a)[V], float (&b)[(V + 1) / 2], int lane) {
  constexpr int H = (V + 1) / 2;
  const bool upper = (lane & OFF) != 0;
#pragma unroll
  for (int i = 0; i < H; ++i) {
    const float lo = a[i];
    const float hi = (i + H < V) ? a[(i + H < V) ? i + H : 0] : 0.f;
    const float send = upper ? lo : hi;
    const float keep = upper ? hi : lo;
    b[i] = keep + __shfl_xor_sync(kFull, send, OFF);
  }
}

constexpr int kBwdGroup = 4;                       // Gaussians reduced together
constexpr int kRedVals = kBwdGroup * kGradSlots;   // 36 values per lane
static_assert(kRedVals == 36, "xpose_origin below is written for 36 values");

__device__ __forceinline__ void reduce36(const float (&v)[36], int lane, float& r0, float& r1) {
  float b[18], c[9], d[5], e[3], f[2];
  xpose_step<36, 16>(v, b, lane);
  xpose_step<18, 8>(b, c, lane);
  xpose_step<9, 4>(c, d, lane);
  xpose_step<5, 2>(d, e, lane);
  xpose_step<3, 1>(e, f, lane);
  r0 = f[0];
  r1 = f[1];
}

// Which of the 36 values the lane's result s (0 or 1) is the sum of; -1 for padding.
__device__ __forceinline__ int xpose_origin(int lane, int s) {
  const int offs[5] = {1, 2, 4, 8, 16}, vs[5] = {3, 5, 9, 18, 36}, hs[5] = {2, 3, 5, 9, 18};
  int pos = s;
#pragma unroll
  for (int q = 0; q < 5; ++q) {
    if (lane & offs[q]) pos += hs[q];
    if (pos >= vs[q]) return -1;
  }
  return pos;
}

// Backward blending. Persistent warps take (patch, segment) items from the forward's work list,
// last appended first: the forward's patches append their items as they finish, so the patches
// with the longest work (long lists, pixels that never saturate) come last there and are taken
// first here instead of setting this kernel's tail. An item is blended back to front over its seg
// list positions (fewer in the patch's last segment, which ends at the patch's last
// contributor), starting from the final state or from the checkpoint at the segment's end.
// Rounds are pipelined as in the forward.
__global__ void __launch_bounds__(32)
render_bwd_kernel(int W, int H, int cull, int seg, int grid_x, int grid_y,
                  const int2* __restrict__ ranges, StageArrays arr, const float* __restrict__ bg,
                  const float* __restrict__ final_T, const int* __restrict__ last_contrib,
                  const float* __restrict__ dL_dcolor, BwdSplit split, float* __restrict__ acc) {
  const float4* __restrict__ ckpt = split.ckpt;
  const int2* __restrict__ work = split.work;
  int* const counters = split.counters;
  __shared__ Stage s;
  // Every warp of this (persistent) grid is resident from the start, so the per-Gaussian
  // backward may be scheduled at once: it takes SMs only as the last warps here finish.
  allow_next_kernel();
  const int lane = threadIdx.x;
  const int HW = H * W;
  const int patches_x = grid_x * kPatchesX;
  // Without a work list (split off) every patch is one item, blended over its whole list.
  const bool listed = work != nullptr;
  const int items = listed ? *(volatile const int*)counters : patches_x * grid_y * kPatchesY;
  if (split.report != nullptr && blockIdx.x == 0 && lane == 0)
    *split.report = SegReport{items, (int)gridDim.x, seg, W, H};
  // This lane's share of the reduced sums: value o = k * 9 + slot of group member k.
  const int o0 = xpose_origin(lane, 0), o1 = xpose_origin(lane, 1);
  const int k0 = o0 >= 0 ? o0 / kGradSlots : kBwdGroup, sl0 = o0 >= 0 ? o0 % kGradSlots : 0;
  const int k1 = o1 >= 0 ? o1 / kGradSlots : kBwdGroup, sl1 = o1 >= 0 ? o1 % kGradSlots : 0;

  for (;;) {
    int it = 0;
    if (lane == 0) it = atomicAdd(counters + 1, 1);
    it = __shfl_sync(kFull, it, 0);
    if (it >= items) return;
    const int2 item = listed ? work[items - 1 - it] : make_int2(it, 0);
    const Patch p = patch_at(lane, item.x % patches_x, item.x / patches_x, grid_x, W, H, ranges);
    const int pix = p.y * W + p.x;

    int last = 0;
    float dC0 = 0.f, dC1 = 0.f, dC2 = 0.f;
    if (p.inside) {
      last = last_contrib[pix];
      dC0 = dL_dcolor[pix];
      dC1 = dL_dcolor[HW + pix];
      dC2 = dL_dcolor[2 * HW + pix];
    }
    const int max_last = warp_max(last);
    if (max_last == 0) continue;
    const int nseg = listed ? (max_last + seg - 1) / seg : 1;
    const int seg_begin = item.y * seg;
    const bool tail = item.y == nseg - 1;
    const int seg_end = tail ? max_last : seg_begin + seg;
    const int begin = p.range.x;
    // transmittance at the segment's end and the colour behind it (per unit transmittance)
    float T = 1.f, ac0 = bg[0], ac1 = bg[1], ac2 = bg[2];
    if (p.inside) {
      if (tail) {
        T = final_T[pix];
      } else {
        const float4 c = ckpt[ckpt_index(split.ckpt_base[p.tile], item.y + 1, p.tpix)];
        T = c.x;
        ac0 = c.y;
        ac1 = c.z;
        ac2 = c.w;
      }
    }

    // Round r covers list positions [max(e - kStage, seg_begin), e), e = seg_end - r kStage.
    auto index_at = [&](int e) {
      const int st = max(e - kStage, seg_begin);
      return (e > seg_begin && st + lane < e) ? arr.point_list[begin + st + lane] : -1;
    };
    Candidate cur = fetch(index_at(seg_end), arr);
    int next_id = index_at(seg_end - kStage);
    for (int e = seg_end; e > seg_begin; e -= kStage) {
      const int n = stage_commit(s, cur, max(e - kStage, seg_begin) + lane, p, cull, lane);
      cur = fetch(next_id, arr);
      next_id = index_at(e - 2 * kStage);
      for (int jj = n - 1; jj >= 0; jj -= kBwdGroup) {
        // group members k = 0..3 sit at stage slots jj - k (back to front)
        if (!__any_sync(kFull, s.pos[max(jj - kBwdGroup + 1, 0)] < last)) continue;
        float al[kBwdGroup], G[kBwdGroup], raw[kBwdGroup], dx[kBwdGroup], dy[kBwdGroup];
#pragma unroll
        for (int k = 0; k < kBwdGroup; ++k) {
          const int j = jj - k;
          al[k] = 0.f;
          G[k] = raw[k] = dx[k] = dy[k] = 0.f;
          if (j >= 0 && s.pos[j] < last) {
            const float2 q = s.xy[j];
            const float4 co = s.co[j];
            dx[k] = p.cx - q.x;
            dy[k] = p.cy - q.y;
            al[k] = blend_alpha(co.x, co.y, co.z, co.w, dx[k], dy[k], G[k], raw[k]);
          }
        }
        float v[kRedVals];
        bool any = false;
#pragma unroll
        for (int k = 0; k < kBwdGroup; ++k) {
          float* vk = v + k * kGradSlots;
          if (al[k] > 0.f) {
            any = true;
            const int j = jj - k;
            const float4 co = s.co[j];
            const float4 c = s.rgb[j];
            const float alpha = al[k], om = 1.f - alpha;
            T = __fdividef(T, om);  // transmittance in front of this Gaussian
            const float w = alpha * T;
            vk[kSlotR] = w * dC0;
            vk[kSlotG] = w * dC1;
            vk[kSlotB] = w * dC2;
            const float dL_dalpha =
                T * ((c.x - ac0) * dC0 + (c.y - ac1) * dC1 + (c.z - ac2) * dC2);
            ac0 = alpha * c.x + om * ac0;
            ac1 = alpha * c.y + om * ac1;
            ac2 = alpha * c.z + om * ac2;
            const bool clamped = raw[k] > kAlphaMax;
            const float gp = clamped ? 0.f : raw[k] * dL_dalpha;  // dL/d power
            vk[kSlotOpacity] = clamped ? 0.f : G[k] * dL_dalpha;
            vk[kSlotPx] = gp * (co.x * dx[k] + co.y * dy[k]);
            vk[kSlotPy] = gp * (co.y * dx[k] + co.z * dy[k]);
            vk[kSlotConicA] = -0.5f * gp * dx[k] * dx[k];
            vk[kSlotConicB] = -gp * dx[k] * dy[k];
            vk[kSlotConicC] = -0.5f * gp * dy[k] * dy[k];
          } else {
#pragma unroll
            for (int q = 0; q < kGradSlots; ++q) vk[q] = 0.f;
          }
        }
        if (!__any_sync(kFull, any)) continue;
        float r0, r1;
        reduce36(v, lane, r0, r1);
        if (o0 >= 0 && r0 != 0.f && jj - k0 >= 0)
          atomicAdd(acc + (size_t)kGradSlots * s.id[jj - k0] + sl0, r0);
        if (o1 >= 0 && r1 != 0.f && jj - k1 >= 0)
          atomicAdd(acc + (size_t)kGradSlots * s.id[jj - k1] + sl1, r1);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Launchers.
cudaError_t launch_preprocess(int N, const Cam& cam, const GaussIn& in, const Geom& geom,
                              const Scratch& s, int* radii, const TileLists& lists,
                              const ListPlan* guess, cudaStream_t stream) {
  PreOut po{geom.xy, geom.conic_o, geom.rgb, s.depth_key, s.rect, radii};
  const ListPlan g = guess != nullptr ? *guess : ListPlan{};
  dispatch_sh(in.shs ? cam.deg : 0, use_vec(cam, in), [&](auto d, auto v) {
    preprocess_fwd_kernel<decltype(d)::value, decltype(v)::value>
        <<<cdiv(N, 256), 256, 0, stream>>>(N, cam, in, po, lists, g, guess != nullptr);
  });
  return cudaGetLastError();
}

cudaError_t launch_emit(int N, const Cam& cam, const Geom& geom, const Scratch& s,
                        const TileLists& lists, const ListPlan& plan, bool guessed,
                        unsigned long long* keys, cudaStream_t stream) {
  if (N <= 0 || plan.keys_room == 0) return cudaSuccess;
  emit_kernel<<<cdiv(N, 256), 256, 0, stream>>>(
      N, cam.grid_x, cam.cull, reinterpret_cast<const ushort4*>(s.rect), s.depth_key,
      (const float2*)geom.xy, (const float4*)geom.conic_o, (const float4*)geom.rgb, lists.cursors,
      guessed ? &lists.stats->go : nullptr, keys);
  return cudaGetLastError();
}

ListPlan exact_plan(const ListStats& s, bool split) {
  ListPlan p{};
  p.keys_room = s.entries;
  p.passes = merge_passes(s.longest);
  p.merge_room = p.passes >= 2 ? (unsigned long long)s.long_entries : 0;
  p.sort_tiles = s.entries > 0 ? s.nonempty : 0;
  // One block per chunk (of the longest list), unless that would make more than 2^31 blocks.
  p.sort_slots = std::min(std::max(cdiv(s.longest, kSortChunk), 1),
                          std::max(1, INT_MAX / std::max(p.sort_tiles, 1)));
  p.merge_tiles = s.num_long;
  p.merge_rows = std::min(std::max(cdiv(s.longest, 256), 1), 65535);
  p.ckpt_slots = split ? s.ckpt_slots : -1;
  return p;
}

cudaError_t launch_sort_lists(const TileLists& lists, const ListPlan& plan, bool guessed,
                              unsigned long long* keys, unsigned long long* merge_buffer,
                              int* point_list, cudaStream_t stream) {
  if (plan.sort_tiles <= 0) return cudaSuccess;
  const int* go = guessed ? &lists.stats->go : nullptr;
  // The non-empty tiles lead the blending order.
  sort_chunks_kernel<<<plan.sort_tiles * plan.sort_slots, kSortThreads, 0, stream>>>(
      go, lists.order, plan.sort_slots, lists.ranges, keys, point_list);
  STGA_TRY(cudaGetLastError());
  if (plan.merge_tiles <= 0) return cudaSuccess;
  const dim3 grid(plan.merge_tiles, plan.merge_rows);
  const unsigned long long* src = keys;
  bool src_in_keys = true;
  for (int p = 0; p < plan.passes; ++p) {
    const bool last = p == plan.passes - 1;
    unsigned long long* dst = last ? nullptr : (src_in_keys ? merge_buffer : keys);
    merge_runs_kernel<<<grid, 256, 0, stream>>>(go, lists.long_tiles, lists.long_offset,
                                                lists.ranges, kSortChunk << p, src, src_in_keys,
                                                dst, !src_in_keys, last ? point_list : nullptr);
    STGA_TRY(cudaGetLastError());
    src = dst;
    src_in_keys = !src_in_keys;
  }
  return cudaSuccess;
}

cudaError_t launch_render_forward(const Cam& cam, const TileLists& lists, bool guessed,
                                  const int* order, const int* point_list, const Geom& geom,
                                  float* color, float* final_T, int* last, const BwdSplit& split,
                                  cudaStream_t stream) {
  const int blocks = cam.grid_x * cam.grid_y * kPatchesPerTile;
  const StageArrays arr{point_list, (const float2*)geom.xy, (const float4*)geom.conic_o,
                        (const float4*)geom.rgb};
  render_fwd_kernel<<<blocks, 32, 0, stream>>>(cam.W, cam.H, cam.grid_x, cam.cull, cam.seg,
                                               guessed ? &lists.stats->go : nullptr, lists.ranges,
                                               order, arr, cam.bg, color, final_T, last, split);
  return cudaGetLastError();
}

cudaError_t launch_backward_render(int N, const Cam& cam, const int* ranges,
                                   const int* point_list, int R, const Geom& geom,
                                   const float* final_T, const int* last,
                                   const float* dL_dcolor, const BwdSplit& split, float* acc,
                                   cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  STGA_TRY(cudaMemsetAsync(acc, 0, sizeof(float) * kGradSlots * (size_t)N, stream));
  if (R <= 0) return cudaSuccess;
  // Persistent warps: as many as fit on the GPU at once, no more than there can be items.
  static int per_sm = 0;
  if (per_sm == 0) {
    STGA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, render_bwd_kernel, 32, 0));
    per_sm = per_sm > 0 ? per_sm : 1;
  }
  const int sms = cam.sm_count;
  const size_t cap = split.work != nullptr ? split.capacity
                                           : (size_t)cam.grid_x * cam.grid_y * kPatchesPerTile;
  const int blocks = (int)(cap < (size_t)sms * per_sm ? cap : (size_t)sms * per_sm);
  const StageArrays arr{point_list, (const float2*)geom.xy, (const float4*)geom.conic_o,
                        (const float4*)geom.rgb};
  render_bwd_kernel<<<blocks, 32, 0, stream>>>(cam.W, cam.H, cam.cull, cam.seg, cam.grid_x,
                                               cam.grid_y, (const int2*)ranges, arr, cam.bg,
                                               final_T, last, dL_dcolor, split, acc);
  return cudaGetLastError();
}

cudaError_t launch_backward_preprocess(int N, const Cam& cam, const GaussIn& in,
                                       const int* radii, const float* acc,
                                       const GaussGrad& grads, bool overlap, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(cdiv(N, kPreBwdThreads));
  cfg.blockDim = dim3(kPreBwdThreads);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = overlap ? 1 : 0;
  cudaError_t err = cudaSuccess;
  dispatch_sh(in.shs ? cam.deg : 0, use_vec(cam, in), [&](auto d, auto v) {
    err = cudaLaunchKernelEx(&cfg, preprocess_bwd_kernel<decltype(d)::value, decltype(v)::value>,
                             N, cam, in, radii, acc, grads);
  });
  return err != cudaSuccess ? err : cudaGetLastError();
}

}  // namespace stga
