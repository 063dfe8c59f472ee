// CUDA kernels of the STGA rasterizer. Written from scratch for STGA; the function computed is
// defined in the package README.
//
// Forward: preprocess (one thread per Gaussian) -> stable sort of the Gaussians by depth -> tiles
// per Gaussian in depth order, inclusive scan -> one (tile, Gaussian) entry per listing tile,
// emitted in depth order -> stable sort by tile id (so each tile's list is in depth order, ties by
// index) -> per-tile ranges -> blending, one block per 16x16 tile, one thread per pixel.
// Backward: blending in reverse per tile, per-pixel gradients summed over each warp and added to
// a per-Gaussian accumulator, then one thread per Gaussian for the chain rule to the inputs.
#include <cub/cub.cuh>

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
// Per-Gaussian kernels.
template <int D, bool VEC>
__global__ void __launch_bounds__(256)
preprocess_fwd_kernel(int N, Cam cam, GaussIn in, PreOut out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < N) preprocess_forward_one<D, VEC>(i, cam, in, out);
}

template <int D, bool VEC>
__global__ void __launch_bounds__(256)
preprocess_bwd_kernel(int N, Cam cam, GaussIn in, const int* __restrict__ radii,
                      const float* __restrict__ acc, GaussGrad g) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < N) preprocess_backward_one<D, VEC>(i, cam, in, radii, acc, g);
}

__global__ void __launch_bounds__(256)
gather_kernel(int N, const int* __restrict__ order, const int* __restrict__ tiles,
              int* __restrict__ out) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j < N) out[j] = tiles[order[j]];
}

// One warp emits the list entries of 32 consecutive Gaussians (in depth order), one Gaussian at a
// time with the lanes spread over its tiles, so that the writes are contiguous.
__global__ void __launch_bounds__(256)
emit_kernel(int N, int grid_x, int cull, const int* __restrict__ order, const int* __restrict__ offsets,
            const uint16_t* __restrict__ rect, const float2* __restrict__ xy,
            const float4* __restrict__ conic_o, const float4* __restrict__ rgb,
            uint32_t* __restrict__ keys, int* __restrict__ vals) {
  const int lane = threadIdx.x & 31;
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  int g = -1, start = 0, x0 = 0, y0 = 0, x1 = 0, y1 = 0;
  CullGeo cg = make_cull_geo(0.f, 0.f, 1.f, 0.f, 1.f, 0.f);
  if (j < N) {
    start = j == 0 ? 0 : offsets[j - 1];
    if (offsets[j] > start) {
      g = order[j];
      const ushort4 r = reinterpret_cast<const ushort4*>(rect)[g];
      x0 = r.x; y0 = r.y; x1 = r.z; y1 = r.w;
      const float2 p = xy[g];
      const float4 co = conic_o[g];
      cg = make_cull_geo(p.x, p.y, co.x, co.y, co.z, rgb[g].w);
    }
  }
  unsigned todo = __ballot_sync(kFull, g >= 0);
  while (todo) {
    const int b = __ffs(todo) - 1;
    todo &= todo - 1;
    const int gb = __shfl_sync(kFull, g, b);
    int pos = __shfl_sync(kFull, start, b);
    const int bx0 = __shfl_sync(kFull, x0, b), by0 = __shfl_sync(kFull, y0, b);
    const int bx1 = __shfl_sync(kFull, x1, b), by1 = __shfl_sync(kFull, y1, b);
    const int w = bx1 - bx0;
    const int n = w * (by1 - by0);
    const bool test = cull && n > 1 && n <= kMaxTestedTiles;
    CullGeo bg;
    if (test) {
      bg.px = __shfl_sync(kFull, cg.px, b);
      bg.py = __shfl_sync(kFull, cg.py, b);
      bg.A = __shfl_sync(kFull, cg.A, b);
      bg.B = __shfl_sync(kFull, cg.B, b);
      bg.C = __shfl_sync(kFull, cg.C, b);
      bg.k = __shfl_sync(kFull, cg.k, b);
      bg.b_over_c = __shfl_sync(kFull, cg.b_over_c, b);
      bg.b_over_a = __shfl_sync(kFull, cg.b_over_a, b);
      bg.ok = __shfl_sync(kFull, (int)cg.ok, b) != 0;
    }
    for (int t0 = 0; t0 < n; t0 += 32) {
      const int t = t0 + lane;
      bool ok = false;
      int tile = 0;
      if (t < n) {
        const int ty = by0 + t / w, tx = bx0 + t % w;
        tile = ty * grid_x + tx;
        ok = !test || tile_hit(tx, ty, bg);
      }
      const unsigned m = __ballot_sync(kFull, ok);
      if (ok) {
        const int p = pos + __popc(m & ((1u << lane) - 1u));
        keys[p] = (uint32_t)tile;
        vals[p] = gb;
      }
      pos += __popc(m);
    }
  }
}

__global__ void __launch_bounds__(256)
ranges_kernel(int R, const uint32_t* __restrict__ keys, int2* __restrict__ ranges) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= R) return;
  const uint32_t tile = keys[i];
  if (i == 0 || keys[i - 1] != tile) ranges[tile].x = i;
  if (i == R - 1 || keys[i + 1] != tile) ranges[tile].y = i + 1;
}

// ---------------------------------------------------------------------------------------------
// Pixel of thread `tid` in its tile: each warp covers an 8x4 patch (more compact than two rows,
// so a small Gaussian touches fewer warps).
__device__ __forceinline__ void pixel_of(int tid, int& lx, int& ly) {
  const int warp = tid >> 5, lane = tid & 31;
  lx = ((warp & 1) << 3) | (lane & 7);
  ly = ((warp >> 1) << 2) | (lane >> 3);
}

// The pixel of a thread of the blending passes (forward and backward), whether it lies in the
// W x H image, its centre, and the block's tile range [range.x, range.y) of point_list.
struct TilePixel {
  int x, y;
  bool inside;
  float cx, cy;
  int2 range;
};

__device__ __forceinline__ TilePixel tile_pixel(int tid, int W, int H,
                                                const int2* __restrict__ ranges) {
  int lx, ly;
  pixel_of(tid, lx, ly);
  TilePixel p;
  p.x = blockIdx.x * kTile + lx;
  p.y = blockIdx.y * kTile + ly;
  p.inside = p.x < W && p.y < H;
  p.cx = (float)p.x + 0.5f;
  p.cy = (float)p.y + 0.5f;
  p.range = ranges[blockIdx.y * gridDim.x + blockIdx.x];
  return p;
}

constexpr int kFwdGroup = 4;   // Gaussians whose alphas are computed together (latency hiding)

__global__ void __launch_bounds__(kBlock)
render_fwd_kernel(int W, int H, const int2* __restrict__ ranges, const int* __restrict__ point_list,
                  const float2* __restrict__ xy, const float4* __restrict__ conic_o,
                  const float4* __restrict__ rgb, const float* __restrict__ bg,
                  float* __restrict__ out_color, float* __restrict__ out_T,
                  int* __restrict__ out_last) {
  __shared__ float2 s_xy[kBlock];
  __shared__ float4 s_co[kBlock];
  __shared__ float4 s_rgb[kBlock];
  const int tid = threadIdx.x;
  const auto [x, y, inside, cx, cy, range] = tile_pixel(tid, W, H, ranges);

  bool done = !inside;
  float T = 1.f, C0 = 0.f, C1 = 0.f, C2 = 0.f;
  int last = 0;
  for (int base = range.x; base < range.y; base += kBlock) {
    if (__syncthreads_count(done) == kBlock) break;
    const int idx = base + tid;
    if (idx < range.y) {
      const int gi = point_list[idx];
      s_xy[tid] = xy[gi];
      s_co[tid] = conic_o[gi];
      s_rgb[tid] = rgb[gi];
    }
    __syncthreads();
    const int n = min(kBlock, range.y - base);
    const int pos0 = base - range.x;
    for (int j = 0; !done && j < n; j += kFwdGroup) {
      float al[kFwdGroup];
#pragma unroll
      for (int k = 0; k < kFwdGroup; ++k) {
        al[k] = 0.f;
        if (j + k < n) {
          const float2 p = s_xy[j + k];
          const float4 co = s_co[j + k];
          float G, raw;
          al[k] = blend_alpha(co.x, co.y, co.z, co.w, cx - p.x, cy - p.y, G, raw);
        }
      }
#pragma unroll
      for (int k = 0; k < kFwdGroup; ++k) {
        if (!done && al[k] > 0.f) {
          const float Tn = T * (1.f - al[k]);
          if (Tn < kTMin) {
            done = true;
          } else {
            const float4 c = s_rgb[j + k];
            const float w = al[k] * T;
            C0 += w * c.x;
            C1 += w * c.y;
            C2 += w * c.z;
            T = Tn;
            last = pos0 + j + k + 1;
          }
        }
      }
    }
  }
  if (inside) {
    const int pix = y * W + x;
    const int HW = H * W;
    out_color[pix] = C0 + T * bg[0];
    out_color[HW + pix] = C1 + T * bg[1];
    out_color[2 * HW + pix] = C2 + T * bg[2];
    out_T[pix] = T;
    out_last[pix] = last;
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

__global__ void __launch_bounds__(kBlock, 3)
render_bwd_kernel(int W, int H, const int2* __restrict__ ranges, const int* __restrict__ point_list,
                  const float2* __restrict__ xy, const float4* __restrict__ conic_o,
                  const float4* __restrict__ rgb, const float* __restrict__ bg,
                  const float* __restrict__ final_T, const int* __restrict__ last_contrib,
                  const float* __restrict__ dL_dcolor, float* __restrict__ acc) {
  __shared__ int s_id[kBlock];
  __shared__ float2 s_xy[kBlock];
  __shared__ float4 s_co[kBlock];
  __shared__ float4 s_rgb[kBlock];
  __shared__ int s_max;
  const int tid = threadIdx.x, lane = tid & 31;
  const auto [x, y, inside, cx, cy, range] = tile_pixel(tid, W, H, ranges);
  const int pix = y * W + x, HW = H * W;

  float T = 1.f;
  int last = 0;
  float dC0 = 0.f, dC1 = 0.f, dC2 = 0.f;
  if (inside) {
    T = final_T[pix];
    last = last_contrib[pix];
    dC0 = dL_dcolor[pix];
    dC1 = dL_dcolor[HW + pix];
    dC2 = dL_dcolor[2 * HW + pix];
  }
  float ac0 = bg[0], ac1 = bg[1], ac2 = bg[2];  // colour behind the current Gaussian

  // This lane's share of the reduced sums: value o = k * 9 + slot of group member k.
  const int o0 = xpose_origin(lane, 0), o1 = xpose_origin(lane, 1);
  const int k0 = o0 >= 0 ? o0 / kGradSlots : kBwdGroup, sl0 = o0 >= 0 ? o0 % kGradSlots : 0;
  const int k1 = o1 >= 0 ? o1 / kGradSlots : kBwdGroup, sl1 = o1 >= 0 ? o1 % kGradSlots : 0;

  if (tid == 0) s_max = 0;
  __syncthreads();
  int wmax = last;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) wmax = max(wmax, __shfl_xor_sync(kFull, wmax, off));
  if (lane == 0) atomicMax(&s_max, wmax);
  __syncthreads();
  const int max_last = s_max;

  for (int end = max_last; end > 0; end -= kBlock) {
    const int n = min(kBlock, end);
    const int start = end - n;
    __syncthreads();
    if (tid < n) {
      const int gi = point_list[range.x + start + tid];
      s_id[tid] = gi;
      s_xy[tid] = xy[gi];
      s_co[tid] = conic_o[gi];
      s_rgb[tid] = rgb[gi];
    }
    __syncthreads();
    for (int jj = n - 1; jj >= 0; jj -= kBwdGroup) {
      // group members k = 0..3 sit at positions start + jj - k (back to front)
      if (!__any_sync(kFull, start + max(jj - kBwdGroup + 1, 0) < last)) continue;
      float al[kBwdGroup], G[kBwdGroup], raw[kBwdGroup], dx[kBwdGroup], dy[kBwdGroup];
#pragma unroll
      for (int k = 0; k < kBwdGroup; ++k) {
        const int j = jj - k;
        al[k] = 0.f;
        G[k] = raw[k] = dx[k] = dy[k] = 0.f;
        if (j >= 0 && start + j < last) {
          const float2 p = s_xy[j];
          const float4 co = s_co[j];
          dx[k] = cx - p.x;
          dy[k] = cy - p.y;
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
          const float4 co = s_co[j];
          const float4 c = s_rgb[j];
          const float alpha = al[k], om = 1.f - alpha;
          T = __fdividef(T, om);  // transmittance in front of this Gaussian
          const float w = alpha * T;
          vk[kSlotR] = w * dC0;
          vk[kSlotG] = w * dC1;
          vk[kSlotB] = w * dC2;
          const float dL_dalpha = T * ((c.x - ac0) * dC0 + (c.y - ac1) * dC1 + (c.z - ac2) * dC2);
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
      if (o0 >= 0 && r0 != 0.f && jj - k0 >= 0) atomicAdd(acc + (size_t)kGradSlots * s_id[jj - k0] + sl0, r0);
      if (o1 >= 0 && r1 != 0.f && jj - k1 >= 0) atomicAdd(acc + (size_t)kGradSlots * s_id[jj - k1] + sl1, r1);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Launchers.
size_t gaussian_stage_temp_bytes(int N) {
  size_t a = 0, b = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, a, (const uint32_t*)nullptr, (uint32_t*)nullptr,
                                  (const int*)nullptr, (int*)nullptr, N, 0, 32);
  cub::DeviceScan::InclusiveSum(nullptr, b, (const int*)nullptr, (int*)nullptr, N);
  return a > b ? a : b;
}

cudaError_t launch_gaussian_stage(int N, const Cam& cam, const GaussIn& in, const Geom& geom,
                                  const Scratch& s, int* radii, void* temp, size_t temp_bytes,
                                  cudaStream_t stream) {
  PreOut po{geom.xy, geom.conic_o, geom.rgb, s.depth_key, s.order_in, s.rect, radii, s.tiles};
  dispatch_sh(in.shs ? cam.deg : 0, use_vec(cam, in), [&](auto d, auto v) {
    preprocess_fwd_kernel<decltype(d)::value, decltype(v)::value>
        <<<cdiv(N, 256), 256, 0, stream>>>(N, cam, in, po);
  });
  STGA_TRY(cudaGetLastError());
  size_t bytes = temp_bytes;
  STGA_TRY(cub::DeviceRadixSort::SortPairs(temp, bytes, s.depth_key, s.depth_sorted, s.order_in,
                                           s.order, N, 0, 32, stream));
  gather_kernel<<<cdiv(N, 256), 256, 0, stream>>>(N, s.order, s.tiles, s.tiles_sorted);
  STGA_TRY(cudaGetLastError());
  bytes = temp_bytes;
  STGA_TRY(cub::DeviceScan::InclusiveSum(temp, bytes, s.tiles_sorted, s.offsets, N, stream));
  return cudaSuccess;
}

static int tile_bits(int num_tiles) {
  int bits = 1;
  while ((1ll << bits) < (long long)num_tiles) ++bits;
  return bits;
}

size_t tile_sort_temp_bytes(int R, int num_tiles) {
  size_t a = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, a, (const uint32_t*)nullptr, (uint32_t*)nullptr,
                                  (const int*)nullptr, (int*)nullptr, R, 0, tile_bits(num_tiles));
  return a;
}

cudaError_t launch_emit(int N, int R, const Cam& cam, const Geom& geom, const Scratch& s,
                        uint32_t* keys, int* vals, int* ranges, cudaStream_t stream) {
  const int num_tiles = cam.grid_x * cam.grid_y;
  STGA_TRY(cudaMemsetAsync(ranges, 0, sizeof(int) * 2 * (size_t)num_tiles, stream));
  if (R <= 0) return cudaSuccess;
  emit_kernel<<<cdiv(N, 256), 256, 0, stream>>>(N, cam.grid_x, cam.cull, s.order, s.offsets, s.rect,
                                                (const float2*)geom.xy,
                                                (const float4*)geom.conic_o,
                                                (const float4*)geom.rgb, keys, vals);
  return cudaGetLastError();
}

cudaError_t launch_tile_sort(int R, const Cam& cam, const uint32_t* keys, uint32_t* keys_sorted,
                             const int* vals, int* point_list, int* ranges, void* temp,
                             size_t temp_bytes, cudaStream_t stream) {
  if (R <= 0) return cudaSuccess;
  const int num_tiles = cam.grid_x * cam.grid_y;
  size_t bytes = temp_bytes;
  STGA_TRY(cub::DeviceRadixSort::SortPairs(temp, bytes, keys, keys_sorted, vals, point_list, R, 0,
                                           tile_bits(num_tiles), stream));
  ranges_kernel<<<cdiv(R, 256), 256, 0, stream>>>(R, keys_sorted, (int2*)ranges);
  return cudaGetLastError();
}

cudaError_t launch_render_forward(const Cam& cam, const int* ranges, const int* point_list,
                                  const Geom& geom, float* color, float* final_T, int* last,
                                  cudaStream_t stream) {
  dim3 grid(cam.grid_x, cam.grid_y);
  render_fwd_kernel<<<grid, kBlock, 0, stream>>>(
      cam.W, cam.H, (const int2*)ranges, point_list, (const float2*)geom.xy,
      (const float4*)geom.conic_o, (const float4*)geom.rgb, cam.bg, color, final_T, last);
  return cudaGetLastError();
}

cudaError_t launch_backward_render(int N, const Cam& cam, const int* ranges,
                                   const int* point_list, int R, const Geom& geom,
                                   const float* final_T, const int* last,
                                   const float* dL_dcolor, float* acc, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  STGA_TRY(cudaMemsetAsync(acc, 0, sizeof(float) * kGradSlots * (size_t)N, stream));
  if (R <= 0) return cudaSuccess;
  dim3 grid(cam.grid_x, cam.grid_y);
  render_bwd_kernel<<<grid, kBlock, 0, stream>>>(
      cam.W, cam.H, (const int2*)ranges, point_list, (const float2*)geom.xy,
      (const float4*)geom.conic_o, (const float4*)geom.rgb, cam.bg, final_T, last, dL_dcolor,
      acc);
  return cudaGetLastError();
}

cudaError_t launch_backward_preprocess(int N, const Cam& cam, const GaussIn& in,
                                       const int* radii, const float* acc,
                                       const GaussGrad& grads, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  dispatch_sh(in.shs ? cam.deg : 0, use_vec(cam, in), [&](auto d, auto v) {
    preprocess_bwd_kernel<decltype(d)::value, decltype(v)::value>
        <<<cdiv(N, 256), 256, 0, stream>>>(N, cam, in, radii, acc, grads);
  });
  return cudaGetLastError();
}

}  // namespace stga
