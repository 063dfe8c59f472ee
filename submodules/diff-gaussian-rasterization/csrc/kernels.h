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
  int go;                      // whether the list phase may run (see ListPlan): 1, or 0 when it
                               // was launched with a guessed plan that the lists do not fit
  int ckpt_slots_at[4];        // the checkpoint slots with each of the segment_choice lengths
};
static_assert(sizeof(ListStats) == 48, "ListStats is 12 int32 words of TileLists");

// Tile lists are sorted by depth in shared memory in chunks of up to kSortChunk entries, one block
// per chunk; longer lists then merge their sorted runs in passes over the whole GPU.
constexpr int kSortChunk = 1024;

// Each tile's entry counter (and later its emission cursor) sits alone in a 32-byte sector, so
// that the atomics of neighbouring, equally busy tiles do not queue on one memory line.
constexpr int kCursorStride = 8;

// The per-tile list bookkeeping, in one int32 allocation of tile_lists_ints(T) words for T tiles,
// of which the first tile_lists_zeroed_ints(T) are zeroed by the caller before the preprocessing:
//   [0, 2T)          ranges: each tile's [start, end) in point_list (int2)
//   [2T, 2T+12)      ListStats
//   [2T+12, 2T+14)   the backward's work-list counters (see BwdSplit)
//   [2T+14]          blocks of the preprocessing done (its last block lays out the lists)
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
inline size_t cursor_base(int T) { return (2 * (size_t)T + 15 + 31) / 32 * 32; }
inline size_t tile_lists_zeroed_ints(int T) { return cursor_base(T) + kCursorStride * (size_t)T; }
inline size_t tile_lists_ints(int T) { return tile_lists_zeroed_ints(T) + 4 * (size_t)T; }
inline TileLists tile_lists_at(int* base, int T) {
  const size_t t = (size_t)T, c = cursor_base(T);
  TileLists l;
  l.ranges = reinterpret_cast<int2*>(base);
  l.stats = reinterpret_cast<ListStats*>(base + 2 * t);
  l.host_stats = nullptr;
  l.work_counters = base + 2 * t + 12;
  l.blocks_done = reinterpret_cast<unsigned*>(base + 2 * t + 14);
  l.cursors = base + c;
  l.long_tiles = base + c + kCursorStride * t;
  l.long_offset = l.long_tiles + t;
  l.ckpt_base = l.long_offset + t;
  l.order = l.ckpt_base + t;
  return l;
}

// Merge passes for lists of up to `longest` entries (runs of kSortChunk, doubling).
STGA_HD int merge_passes(long long longest) {
  int p = 0;
  while (((long long)kSortChunk << p) < longest) ++p;
  return p;
}

// The sizes that the list phase (emission, sort, merges, blending) is launched with. The host
// may launch it before it knows the lists (ListStats), with a plan guessed from the previous
// call: the preprocessing's last block then checks plan_fits and sets ListStats::go, every
// kernel of the phase does nothing unless it is set, and the host, reading the same ListStats,
// launches the phase again with the exact plan (whose kernels do not look at go).
struct ListPlan {
  unsigned long long keys_room;   // entries of the keys buffer (and of point_list)
  unsigned long long merge_room;  // entries of the merge buffer, after the keys
  int sort_tiles;                 // tiles of the blending order that the sort's blocks take
  int sort_slots;                 // sort blocks per tile (any number >= 1 sorts every chunk)
  int merge_tiles;                // long tiles that the merge passes' blocks take
  int merge_rows;                 // blocks per long tile in a merge pass (any number >= 1)
  int passes;                     // merge passes (more than needed only copy)
  int ckpt_slots;                 // checkpoint slots of the backward split; -1: no split
};
STGA_HD bool plan_fits(const ListStats& s, const ListPlan& p) {
  return s.entries <= p.keys_room && s.nonempty <= p.sort_tiles && s.num_long <= p.merge_tiles &&
         merge_passes(s.longest) <= p.passes &&
         (p.passes < 2 || (unsigned long long)s.long_entries <= p.merge_room) &&
         (p.ckpt_slots < 0 || s.ckpt_slots <= p.ckpt_slots);
}
// The plan that fits `s` exactly (split: with the backward's split).
ListPlan exact_plan(const ListStats& s, bool split);

// Per-Gaussian preprocessing. Also counts each tile's entries and, in its last block, lays out
// the lists (ranges, cursors, the long tiles, checkpoint slots, the tiles' order by length,
// ListStats, also to lists.host_stats if set), go included (against `guess` if not null; then
// the long tiles' list is also padded with -1 up to guess->merge_tiles).
cudaError_t launch_preprocess(int N, const Cam& cam, const GaussIn& in, const Geom& geom,
                              const Scratch& s, int* radii, const TileLists& lists,
                              const ListPlan* guess, cudaStream_t stream);

// Writes each tile's entries (depth key << 32 | Gaussian index), in no particular order, into
// keys at the tile's range (through the tiles' cursors).
// `guessed`: the plan is a guess (the kernels of the phase check ListStats::go).
cudaError_t launch_emit(int N, const Cam& cam, const Geom& geom, const Scratch& s,
                        const TileLists& lists, const ListPlan& plan, bool guessed,
                        unsigned long long* keys, cudaStream_t stream);
// Sorts each tile's entries (by depth, ties by index) into point_list. `keys` is overwritten;
// merge_buffer: plan.merge_room entries.
cudaError_t launch_sort_lists(const TileLists& lists, const ListPlan& plan, bool guessed,
                              unsigned long long* keys, unsigned long long* merge_buffer,
                              int* point_list, cudaStream_t stream);

// The backward's work split, written by the forward blending (null pointers: no backward, or
// the split switched off; the backward then takes each patch as one item). A tile's list is cut
// into segments of cam.seg positions; ckpt holds, for each segment boundary inside a list (list
// positions k seg, k >= 1), each of the tile's pixels' transmittance there and the colour behind
// it per unit transmittance, at slot ckpt_base[tile] + k - 1 (ListStats::ckpt_slots slots in
// all); work holds (patch, segment) items; counters[0] counts the items, counters[1] the items
// taken by the backward (both zeroed by the caller; TileLists::work_counters).
//
// The segment length is chosen per call among segment_choice(0..3) (rasterizer.cpp): shorter
// segments make more, shorter items, which balance the backward when the items are few for the
// GPU's persistent warps, at the cost of more checkpoints. The backward blending reports its
// items, warps, segment length and image size (SegReport) to mapped host memory for the next
// call's choice.
constexpr int kSegChoices = 4;
STGA_HD constexpr int segment_choice(int k) {
  return k == 0 ? 384 : k == 1 ? 256 : k == 2 ? 192 : 128;
}
// k with segment_choice(k) == seg, or -1 when seg is not a choice.
inline int segment_choice_index(int seg) {
  for (int k = 0; k < kSegChoices; ++k)
    if (segment_choice(k) == seg) return k;
  return -1;
}
static_assert(sizeof(ListStats::ckpt_slots_at) == kSegChoices * sizeof(int),
              "ListStats counts the checkpoints of every choice");
constexpr int kDefaultSeg = 384;   // with no report for the image size, or STGA_RASTER_SEG
constexpr int kPatchesPerTile = 8;
constexpr int kBlockPixels = kTile * kTile;
struct SegReport {
  int items, warps, seg, W, H;
};
struct BwdSplit {
  float4* ckpt;           // (ckpt_slots x kBlockPixels)
  int2* work;             // (capacity)
  size_t capacity;        // work_capacity(...)
  int* counters;          // (2)
  const int* ckpt_base;   // TileLists::ckpt_base
  SegReport* report;      // mapped host memory (the backward writes it), or null
};
// Work items of the split: at most one per segment of each of a tile's 8 patches.
inline size_t work_capacity(int num_tiles, int ckpt_slots) {
  return (size_t)kPatchesPerTile * ((size_t)num_tiles + (size_t)ckpt_slots);
}

// Front-to-back blending: color (3,H,W), final transmittance and last contributor per pixel,
// and the backward's work split when split.ckpt is not null. Tiles are taken in the order
// `order` (TileLists::order), or in index order when it is null.
cudaError_t launch_render_forward(const Cam& cam, const TileLists& lists, bool guessed,
                                  const int* order, const int* point_list, const Geom& geom,
                                  float* color, float* final_T, int* last, const BwdSplit& split,
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
