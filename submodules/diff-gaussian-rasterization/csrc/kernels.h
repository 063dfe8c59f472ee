// Launchers of the STGA rasterizer's CUDA kernels (kernels.cu). No PyTorch here: the host code
// in rasterizer.cpp allocates the buffers and calls these on its stream. Each launcher returns the
// first CUDA error it met (cudaSuccess otherwise).
#pragma once

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "raster_math.cuh"

namespace stga {

// Per-Gaussian float buffers kept for the backward pass, carved out of one allocation.
struct Geom {
  float* conic_o;  // (N,4)
  float* rgb;      // (N,4), w = culling level
  float* xy;       // (N,2)
};
constexpr int kGeomFloats = 10;
inline Geom geom_at(float* base, int N) {
  Geom g;
  g.conic_o = base;
  g.rgb = base + 4 * (size_t)N;
  g.xy = base + 8 * (size_t)N;
  return g;
}

// Forward-only per-Gaussian scratch (int32 words), carved out of one allocation.
struct Scratch {
  uint16_t* rect;       // (N,4) cut tile rectangle; empty when the Gaussian is listed nowhere
  uint32_t* depth_key;  // (N) float bits of the view depth
};
constexpr int kScratchWords = 3;
inline Scratch scratch_at(int32_t* base, int N) {
  Scratch s;
  s.rect = (uint16_t*)base;  // first: 8-byte aligned for ushort4 loads
  s.depth_key = (uint32_t*)(base + 2 * (size_t)N);
  return s;
}

// What the host reads after the preprocessing (its one sync): the number of list entries and
// the shape of the per-tile depth sort.
struct ListStats {
  unsigned long long entries;  // R, the number of (tile, Gaussian) entries
  int nonempty;                // tiles with at least one entry
  int num_long;                // tiles with more than kSortChunk entries
  int long_entries;            // entries of those tiles
  int longest;                 // entries of the longest list
  int ckpt_slots;              // the backward split's checkpoint slots (see BwdSplit)
  int written;                 // 1 once the preprocessing wrote these (see TileLists::host_stats)
};
static_assert(sizeof(ListStats) == 32, "ListStats is read as 8 int32 words");

// Tile lists are sorted by depth in shared memory in chunks of up to kSortChunk entries, one block
// per chunk; longer lists then merge their sorted runs in passes over the whole GPU.
constexpr int kSortChunk = 1024;

// Each tile's entry counter (and later its emission cursor) sits alone in a 32-byte sector, so
// that the atomics of neighbouring, equally busy tiles do not queue on one memory line.
constexpr int kCursorStride = 8;

// The per-tile list bookkeeping, in one int32 allocation of tile_lists_ints(T) words for T tiles,
// of which the first tile_lists_zeroed_ints(T) are zeroed by the caller before the preprocessing:
//   [0, 2T)          ranges: each tile's [start, end) in point_list (int2)
//   [2T, 2T+8)       ListStats
//   [2T+8, 2T+10)    the backward's work-list counters (see BwdSplit)
//   [2T+10]          blocks of the preprocessing done (its last block lays out the lists)
//   [C, C+8T)        the tiles' counters / cursors (kCursorStride apart), C = cursor_base(T)
//   [C+8T, C+12T)    the long tiles, each long tile's offset in the merge buffer, each tile's
//                    first checkpoint slot, and the order of the tiles by list length, longest
//                    first (the non-empty tiles lead it) (T words each)
struct TileLists {
  int2* ranges;
  ListStats* stats;
  ListStats* host_stats;  // not in the allocation: mapped, pinned host memory where the layout
                          // also writes the stats (the host's one read), or null
  int* work_counters;
  unsigned* blocks_done;
  int* cursors;
  int* long_tiles;
  int* long_offset;
  int* ckpt_base;
  int* order;
};
inline size_t cursor_base(int T) { return (2 * (size_t)T + 11 + 31) / 32 * 32; }
inline size_t tile_lists_zeroed_ints(int T) { return cursor_base(T) + kCursorStride * (size_t)T; }
inline size_t tile_lists_ints(int T) { return tile_lists_zeroed_ints(T) + 4 * (size_t)T; }
inline TileLists tile_lists_at(int* base, int T) {
  const size_t t = (size_t)T, c = cursor_base(T);
  TileLists l;
  l.ranges = reinterpret_cast<int2*>(base);
  l.stats = reinterpret_cast<ListStats*>(base + 2 * t);
  l.host_stats = nullptr;
  l.work_counters = base + 2 * t + 8;
  l.blocks_done = reinterpret_cast<unsigned*>(base + 2 * t + 10);
  l.cursors = base + c;
  l.long_tiles = base + c + kCursorStride * t;
  l.long_offset = l.long_tiles + t;
  l.ckpt_base = l.long_offset + t;
  l.order = l.ckpt_base + t;
  return l;
}

// Per-Gaussian preprocessing. Also counts each tile's entries and, in its last block, lays out
// the lists (ranges, cursors, the long tiles, checkpoint slots, the tiles' order by length,
// ListStats, also to lists.host_stats if set).
cudaError_t launch_preprocess(int N, const Cam& cam, const GaussIn& in, const Geom& geom,
                              const Scratch& s, int* radii, const TileLists& lists,
                              cudaStream_t stream);
// Writes each tile's entries (depth key << 32 | Gaussian index), in no particular order, into
// keys at the tile's range (through the tiles' cursors). Writes nothing if there are more than
// `capacity` entries (ListStats::entries, read on the device: the emission can be queued before
// the host knows the count).
cudaError_t launch_emit(int N, const Cam& cam, const Geom& geom, const Scratch& s,
                        const TileLists& lists, unsigned long long* keys,
                        unsigned long long capacity, cudaStream_t stream);
// Entries of the buffer that sort_lists needs for merging (0: none).
size_t merge_buffer_entries(const ListStats& stats);
// Sorts each tile's entries (by depth, ties by index) into point_list. `keys` is overwritten.
cudaError_t launch_sort_lists(const TileLists& lists, const ListStats& stats,
                              unsigned long long* keys, unsigned long long* merge_buffer,
                              int* point_list, cudaStream_t stream);

// The backward's work split, written by the forward blending (null pointers: no backward, or
// the split switched off; the backward then takes each patch as one item). A tile's list is cut
// into segments of cam.seg positions; ckpt holds, for each segment boundary inside a list (list
// positions k seg, k >= 1), each of the tile's pixels' transmittance there and the colour behind
// it per unit transmittance, at slot ckpt_base[tile] + k - 1 (ListStats::ckpt_slots slots in
// all); work holds (patch, segment) items; counters[0] counts the items, counters[1] the items
// taken by the backward (both zeroed by the caller; TileLists::work_counters).
constexpr int kDefaultSeg = 384;   // positions per segment unless STGA_RASTER_SEG says otherwise
constexpr int kPatchesPerTile = 8;
constexpr int kBlockPixels = kTile * kTile;
struct BwdSplit {
  float4* ckpt;           // (ckpt_slots x kBlockPixels)
  int2* work;             // (capacity)
  size_t capacity;        // work_capacity(...)
  int* counters;          // (2)
  const int* ckpt_base;   // TileLists::ckpt_base
};
// Work items of the split: at most one per segment of each of a tile's 8 patches.
inline size_t work_capacity(int num_tiles, int ckpt_slots) {
  return (size_t)kPatchesPerTile * ((size_t)num_tiles + (size_t)ckpt_slots);
}

// Front-to-back blending: color (3,H,W), final transmittance and last contributor per pixel,
// and the backward's work split when split.ckpt is not null. Tiles are taken in the order
// `order` (TileLists::order), or in index order when it is null.
cudaError_t launch_render_forward(const Cam& cam, const int* ranges, const int* order,
                                  const int* point_list, const Geom& geom, float* color,
                                  float* final_T, int* last, const BwdSplit& split,
                                  cudaStream_t stream);

// Backward blending: acc (N x kGradSlots, zeroed here) from dL/dcolor.
cudaError_t launch_backward_render(int N, const Cam& cam, const int* ranges,
                                   const int* point_list, int R, const Geom& geom,
                                   const float* final_T, const int* last,
                                   const float* dL_dcolor, const BwdSplit& split, float* acc,
                                   cudaStream_t stream);

// Backward per Gaussian: from acc to the gradients of the inputs. With `overlap` (sm_90 and
// later) it is launched as a programmatic dependent of the backward blending, which must be the
// previous kernel in the stream: its blocks start while the blending finishes.
cudaError_t launch_backward_preprocess(int N, const Cam& cam, const GaussIn& in,
                                       const int* radii, const float* acc,
                                       const GaussGrad& grads, bool overlap, cudaStream_t stream);

}  // namespace stga
