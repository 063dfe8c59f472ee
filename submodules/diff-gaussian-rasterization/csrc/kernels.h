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
  uint32_t* depth_key;     // (N)
  uint32_t* depth_sorted;  // (N)
  int* order_in;           // (N)
  int* order;              // (N) Gaussians by depth
  int* tiles;              // (N) tiles listing each Gaussian
  int* tiles_sorted;       // (N) the same in depth order
  int* offsets;            // (N) inclusive scan of tiles_sorted
  uint16_t* rect;          // (N,4)
};
constexpr int kScratchWords = 9;
inline Scratch scratch_at(int32_t* base, int N) {
  Scratch s;
  const size_t n = (size_t)N;
  s.rect = (uint16_t*)base;  // first: 8-byte aligned for ushort4 loads
  s.depth_key = (uint32_t*)(base + 2 * n);
  s.depth_sorted = (uint32_t*)(base + 3 * n);
  s.order_in = base + 4 * n;
  s.order = base + 5 * n;
  s.tiles = base + 6 * n;
  s.tiles_sorted = base + 7 * n;
  s.offsets = base + 8 * n;
  return s;
}

// Bytes of cub temporary storage for the depth order (depth sort and scan).
size_t gaussian_stage_temp_bytes(int N);
// Per-Gaussian preprocessing; adds the number of list entries to *entries (zeroed by the caller).
cudaError_t launch_preprocess(int N, const Cam& cam, const GaussIn& in, const Geom& geom,
                              const Scratch& s, int* radii, unsigned long long* entries,
                              cudaStream_t stream);
// Stable depth sort, tile counts in depth order and their inclusive scan (s.offsets).
cudaError_t launch_depth_order(int N, const Scratch& s, void* temp, size_t temp_bytes,
                               cudaStream_t stream);

// Bytes of cub temporary storage for sorting R list entries by tile.
size_t tile_sort_temp_bytes(int R, int num_tiles);
// Emits the R (tile, Gaussian) entries in depth order.
cudaError_t launch_emit(int N, int R, const Cam& cam, const Geom& geom, const Scratch& s,
                        uint32_t* keys, int* vals, cudaStream_t stream);
// Sorts the entries by tile id (stably) into point_list and fills ranges (zeroed by the caller).
cudaError_t launch_tile_sort(int R, const Cam& cam, const uint32_t* keys, uint32_t* keys_sorted,
                             const int* vals, int* point_list, int* ranges, void* temp,
                             size_t temp_bytes, cudaStream_t stream);

// The backward's work split, written by the forward blending (null pointers: no backward, or
// the split switched off; the backward then takes each patch as one item).
// ckpt holds, for every tile list position that is a positive multiple of kSeg from the tile's
// start, each of the tile's pixels' transmittance there and the colour behind it per unit
// transmittance; work holds (patch, segment) items; counters[0] counts the items, counters[1]
// the items taken by the backward (both zeroed by the caller).
constexpr int kSeg = 512;
constexpr int kPatchesPerTile = 8;
constexpr int kBlockPixels = kTile * kTile;
struct BwdSplit {
  float4* ckpt;     // (ckpt_slots(R) x kBlockPixels)
  int2* work;       // (work_capacity(R, num_tiles))
  int* counters;    // (2)
};
inline size_t ckpt_slots(int R) { return (size_t)R / kSeg + 1; }
inline size_t work_capacity(int R, int num_tiles) {
  return (size_t)kPatchesPerTile * ((size_t)num_tiles + (size_t)R / kSeg + 1);
}

// Front-to-back blending: color (3,H,W), final transmittance and last contributor per pixel,
// and the backward's work split when split.ckpt is not null.
cudaError_t launch_render_forward(const Cam& cam, const int* ranges, const int* point_list,
                                  const Geom& geom, float* color, float* final_T, int* last,
                                  const BwdSplit& split, cudaStream_t stream);

// Backward blending: acc (N x kGradSlots, zeroed here) from dL/dcolor.
cudaError_t launch_backward_render(int N, const Cam& cam, const int* ranges,
                                   const int* point_list, int R, const Geom& geom,
                                   const float* final_T, const int* last,
                                   const float* dL_dcolor, const BwdSplit& split, float* acc,
                                   cudaStream_t stream);

// Backward per Gaussian: from acc to the gradients of the inputs.
cudaError_t launch_backward_preprocess(int N, const Cam& cam, const GaussIn& in,
                                       const int* radii, const float* acc,
                                       const GaussGrad& grads, cudaStream_t stream);

}  // namespace stga
