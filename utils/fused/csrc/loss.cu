// The photometric training loss of 3DGS, (1 - l) mean|x - y| + l (1 - mean SSIM), and its
// gradient with respect to the render x, computed together in one pass over the image.
//
// Same maths as training/loss.py::photometric_loss on the target of utils/images.py::composite_rgba
// (which stays the reference), but three kernel launches instead of ~40 PyTorch ones:
//   1. ssim_forward_kernel: per 32x16 tile and channel, blur the five maps x, y, x^2, y^2, xy
//      (11-tap Gaussian, zero outside the image) from shared memory with a 5-pixel halo; write
//      dSSIM/d(mu_x, E[x^2], E[xy]) per pixel and the tile's sums of SSIM and |x - y|.
//   2. ssim_backward_kernel: blur those three maps with the same window (the blur is its own
//      adjoint: symmetric taps, zero padding) and combine them with x and y into the gradient.
//   3. finish_loss_kernel: add the tile sums in a fixed order and write the loss.
// With l == 0 an L1-only kernel replaces 1 and 2. There are no atomics, so the loss and the
// gradient are bitwise reproducible; sums are in double.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "checks.h"

namespace {

// ---- kernels ----------------------------------------------------------------------------------

constexpr int kRadius = 5;                    // 11-tap window
constexpr int kTaps = 2 * kRadius + 1;
constexpr int kTileW = 32;                    // output pixels per block = threads per block
constexpr int kTileH = 16;
constexpr int kTileThreads = kTileW * kTileH;
constexpr int kHaloW = kTileW + 2 * kRadius;  // input pixels a tile's blur reads
constexpr int kHaloH = kTileH + 2 * kRadius;
constexpr int kReduceThreads = 512;
constexpr float kC1 = 0.01f * 0.01f;          // SSIM constants for a data range of 1
constexpr float kC2 = 0.03f * 0.03f;

// The normalised 1-D Gaussian window (sigma 1.5), passed by value as a kernel argument.
struct GaussianTaps {
  float w[kTaps];
};

// Ground truth value of channel c at a pixel: u8 / 255, composited onto the background when the
// target has an alpha channel. IEEE-rounded operations (immune to --use_fast_math and fma
// contraction) so that it is bitwise the float32 value utils/images.py computes on the CPU.
__device__ __forceinline__ float target_value(const uint8_t* __restrict__ target, int channels,
                                              int64_t pixel, int c, float background) {
  const uint8_t* px = target + pixel * channels;
  const float value = __fdiv_rn(static_cast<float>(px[c]), 255.0f);
  if (channels == 3) return value;
  const float alpha = __fdiv_rn(static_cast<float>(px[3]), 255.0f);
  return __fadd_rn(__fmul_rn(value, alpha), __fmul_rn(background, __fsub_rn(1.0f, alpha)));
}

__device__ __forceinline__ float sign_of(float v) {
  return static_cast<float>((v > 0.0f) - (v < 0.0f));  // sign(0) = 0, as torch's abs backward
}

// Sums a and b over the kThreads threads of a block, in a fixed order (warp shuffles, then the
// warp totals in warp order). The totals are valid in thread 0 only. Called by every thread.
template <int kThreads>
__device__ __forceinline__ void block_sum_pair(double& a, double& b) {
  static_assert(kThreads % 32 == 0 && kThreads / 32 <= 32, "one warp must hold the warp totals");
  constexpr int kWarps = kThreads / 32;
  __shared__ double warp_a[kWarps];
  __shared__ double warp_b[kWarps];
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  for (int offset = 16; offset > 0; offset >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, offset);
    b += __shfl_down_sync(0xffffffffu, b, offset);
  }
  if (lane == 0) {
    warp_a[warp] = a;
    warp_b[warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < kWarps ? warp_a[lane] : 0.0;
    b = lane < kWarps ? warp_b[lane] : 0.0;
    for (int offset = 16; offset > 0; offset >>= 1) {
      a += __shfl_down_sync(0xffffffffu, a, offset);
      b += __shfl_down_sync(0xffffffffu, b, offset);
    }
  }
}

// Each tile block writes its SSIM and |x - y| sums at its linear index in the grid.
__device__ __forceinline__ void store_tile_sums(float ssim, float abs_diff,
                                                double* __restrict__ ssim_sums,
                                                double* __restrict__ l1_sums) {
  double a = ssim;
  double b = abs_diff;
  block_sum_pair<kTileThreads>(a, b);
  if (threadIdx.x == 0 && threadIdx.y == 0) {
    const int block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    ssim_sums[block] = a;
    l1_sums[block] = b;
  }
}

// Gaussian blur, zero outside the image, of K maps at this thread's pixel of the block's tile.
// load(row, col, v) writes the K map values of an in-image pixel into v. The K maps of the tile
// and its halo go to `halo`; the horizontal pass over all halo rows goes to `rows`; the vertical
// pass ends in registers. Must be called by every thread of the block.
template <int K, typename Load>
__device__ __forceinline__ void blur_tile(const GaussianTaps& taps, int height, int width,
                                          Load load, float (&halo)[K][kHaloH][kHaloW],
                                          float (&rows)[K][kHaloH][kTileW], float (&out)[K]) {
  const int tid = threadIdx.y * kTileW + threadIdx.x;
  const int row0 = static_cast<int>(blockIdx.y) * kTileH - kRadius;  // image row of halo row 0
  const int col0 = static_cast<int>(blockIdx.x) * kTileW - kRadius;
  for (int i = tid; i < kHaloH * kHaloW; i += kTileThreads) {
    const int r = i / kHaloW;
    const int c = i - r * kHaloW;
    const int row = row0 + r;
    const int col = col0 + c;
    float v[K];
    if (row >= 0 && row < height && col >= 0 && col < width) {
      load(row, col, v);
    } else {
#pragma unroll
      for (int k = 0; k < K; ++k) v[k] = 0.0f;
    }
#pragma unroll
    for (int k = 0; k < K; ++k) halo[k][r][c] = v[k];
  }
  __syncthreads();
  // Output column c of the tile is halo column c + kRadius: its window is halo columns c..c+10.
  for (int i = tid; i < kHaloH * kTileW; i += kTileThreads) {
    const int r = i / kTileW;
    const int c = i - r * kTileW;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      float sum = 0.0f;
#pragma unroll
      for (int t = 0; t < kTaps; ++t) sum += taps.w[t] * halo[k][r][c + t];
      rows[k][r][c] = sum;
    }
  }
  __syncthreads();
  // Output row threadIdx.y is halo row threadIdx.y + kRadius: its window is rows ty..ty+10.
#pragma unroll
  for (int k = 0; k < K; ++k) {
    float sum = 0.0f;
#pragma unroll
    for (int t = 0; t < kTaps; ++t) sum += taps.w[t] * rows[k][threadIdx.y + t][threadIdx.x];
    out[k] = sum;
  }
}

// Kernel 1: SSIM map, its partial derivatives with respect to the blurred moments, L1 terms.
// d_moments is (3 moments, 3 channels, H, W): dS/d mu_x, dS/d E[x^2], dS/d E[xy].
__global__ void __launch_bounds__(kTileThreads)
    ssim_forward_kernel(const float* __restrict__ image, const uint8_t* __restrict__ target,
                        int target_channels, const float* __restrict__ background, int height,
                        int width, GaussianTaps taps, float* __restrict__ d_moments,
                        double* __restrict__ ssim_sums, double* __restrict__ l1_sums) {
  __shared__ float halo[5][kHaloH][kHaloW];
  __shared__ float rows[5][kHaloH][kTileW];
  const int c = blockIdx.z;
  const int64_t plane = static_cast<int64_t>(height) * width;
  const float* x_plane = image + c * plane;
  const float bg = background[c];
  auto load = [&](int row, int col, float (&v)[5]) {
    const int64_t p = static_cast<int64_t>(row) * width + col;
    const float x = x_plane[p];
    const float y = target_value(target, target_channels, p, c, bg);
    v[0] = x;
    v[1] = y;
    v[2] = x * x;
    v[3] = y * y;
    v[4] = x * y;
  };
  float m[5];
  blur_tile<5>(taps, height, width, load, halo, rows, m);

  const int row = blockIdx.y * kTileH + threadIdx.y;
  const int col = blockIdx.x * kTileW + threadIdx.x;
  float ssim = 0.0f;
  float abs_diff = 0.0f;
  if (row < height && col < width) {
    const float x = halo[0][threadIdx.y + kRadius][threadIdx.x + kRadius];
    const float y = halo[1][threadIdx.y + kRadius][threadIdx.x + kRadius];
    abs_diff = fabsf(x - y);
    const float mu_x = m[0], mu_y = m[1], e_xx = m[2], e_yy = m[3], e_xy = m[4];
    const float mu_xx = mu_x * mu_x, mu_yy = mu_y * mu_y, mu_xy = mu_x * mu_y;
    // S = (A B) / (C D): A, C from the means, B, D from the (co)variances.
    const float A = 2.0f * mu_xy + kC1;
    const float B = 2.0f * (e_xy - mu_xy) + kC2;
    const float C = mu_xx + mu_yy + kC1;
    const float D = (e_xx - mu_xx) + (e_yy - mu_yy) + kC2;
    const float inv_cd = 1.0f / (C * D);
    ssim = A * B * inv_cd;
    // dA/dmu_x = 2 mu_y, dB/dmu_x = -2 mu_y, dC/dmu_x = 2 mu_x, dD/dmu_x = -2 mu_x,
    // dD/dE[x^2] = 1, dB/dE[xy] = 2.
    const float d_mu_x = 2.0f * inv_cd * (mu_y * (B - A) - mu_x * ssim * (D - C));
    const float d_e_xx = -ssim / D;
    const float d_e_xy = 2.0f * A * inv_cd;
    const int64_t p = static_cast<int64_t>(row) * width + col;
    d_moments[(0 * 3 + c) * plane + p] = d_mu_x;
    d_moments[(1 * 3 + c) * plane + p] = d_e_xx;
    d_moments[(2 * 3 + c) * plane + p] = d_e_xy;
  }
  store_tile_sums(ssim, abs_diff, ssim_sums, l1_sums);
}

// Kernel 2: d loss / d x = l1_scale sign(x - y)
//   + ssim_scale (G*dS/dmu_x + 2 x G*dS/dE[x^2] + y G*dS/dE[xy]),  G* the zero-padded blur.
__global__ void __launch_bounds__(kTileThreads)
    ssim_backward_kernel(const float* __restrict__ image, const uint8_t* __restrict__ target,
                         int target_channels, const float* __restrict__ background, int height,
                         int width, GaussianTaps taps, const float* __restrict__ d_moments,
                         float l1_scale, float ssim_scale, float* __restrict__ grad) {
  __shared__ float halo[3][kHaloH][kHaloW];
  __shared__ float rows[3][kHaloH][kTileW];
  const int c = blockIdx.z;
  const int64_t plane = static_cast<int64_t>(height) * width;
  auto load = [&](int row, int col, float (&v)[3]) {
    const int64_t p = static_cast<int64_t>(row) * width + col;
#pragma unroll
    for (int k = 0; k < 3; ++k) v[k] = d_moments[(k * 3 + c) * plane + p];
  };
  float g[3];
  blur_tile<3>(taps, height, width, load, halo, rows, g);

  const int row = blockIdx.y * kTileH + threadIdx.y;
  const int col = blockIdx.x * kTileW + threadIdx.x;
  if (row < height && col < width) {
    const int64_t p = static_cast<int64_t>(row) * width + col;
    const float x = image[c * plane + p];
    const float y = target_value(target, target_channels, p, c, background[c]);
    grad[c * plane + p] =
        l1_scale * sign_of(x - y) + ssim_scale * (g[0] + 2.0f * x * g[1] + y * g[2]);
  }
}

// Replaces kernels 1 and 2 when the SSIM weight is 0: gradient and tile sums of the L1 term.
__global__ void __launch_bounds__(kTileThreads)
    l1_kernel(const float* __restrict__ image, const uint8_t* __restrict__ target,
              int target_channels, const float* __restrict__ background, int height, int width,
              float l1_scale, float* __restrict__ grad, double* __restrict__ ssim_sums,
              double* __restrict__ l1_sums) {
  const int c = blockIdx.z;
  const int64_t plane = static_cast<int64_t>(height) * width;
  const int row = blockIdx.y * kTileH + threadIdx.y;
  const int col = blockIdx.x * kTileW + threadIdx.x;
  float abs_diff = 0.0f;
  if (row < height && col < width) {
    const int64_t p = static_cast<int64_t>(row) * width + col;
    const float x = image[c * plane + p];
    const float y = target_value(target, target_channels, p, c, background[c]);
    abs_diff = fabsf(x - y);
    grad[c * plane + p] = l1_scale * sign_of(x - y);
  }
  store_tile_sums(0.0f, abs_diff, ssim_sums, l1_sums);
}

// Kernel 3 (one block): loss = (1 - l) sum|x - y| / N + l (1 - sum SSIM / N), N = 3 H W.
__global__ void __launch_bounds__(kReduceThreads)
    finish_loss_kernel(const double* __restrict__ ssim_sums, const double* __restrict__ l1_sums,
                       int num_tiles, double count, double lambda_dssim,
                       float* __restrict__ loss) {
  double ssim = 0.0;
  double l1 = 0.0;
  for (int i = threadIdx.x; i < num_tiles; i += kReduceThreads) {
    ssim += ssim_sums[i];
    l1 += l1_sums[i];
  }
  block_sum_pair<kReduceThreads>(ssim, l1);
  if (threadIdx.x == 0) {
    const double l1_mean = l1 / count;
    const double value = lambda_dssim == 0.0
                             ? l1_mean
                             : (1.0 - lambda_dssim) * l1_mean + lambda_dssim * (1.0 - ssim / count);
    *loss = static_cast<float>(value);
  }
}

// ---- host entry point -------------------------------------------------------------------------

GaussianTaps gaussian_taps() {
  constexpr double kSigma = 1.5;
  double raw[kTaps];
  double total = 0.0;
  for (int i = 0; i < kTaps; ++i) {
    const double d = i - kRadius;
    raw[i] = std::exp(-(d * d) / (2.0 * kSigma * kSigma));
    total += raw[i];
  }
  GaussianTaps taps;
  for (int i = 0; i < kTaps; ++i) taps.w[i] = static_cast<float>(raw[i] / total);
  return taps;
}

}  // namespace

std::vector<torch::Tensor> photometric_loss_with_grad(const torch::Tensor& image,
                                                      const torch::Tensor& target,
                                                      const torch::Tensor& background,
                                                      double lambda_dssim) {
  stga_fused::check_loss_inputs(image, target, background, lambda_dssim);
  const int64_t height = image.size(1);
  const int64_t width = image.size(2);

  const c10::cuda::CUDAGuard device_guard(image.device());
  const torch::Tensor x = image.contiguous();
  const torch::Tensor y = target.contiguous();
  const torch::Tensor bg = background.contiguous();
  const int h = static_cast<int>(height);
  const int w = static_cast<int>(width);
  const int channels = static_cast<int>(y.size(2));

  const dim3 tile_block(kTileW, kTileH);
  const dim3 tile_grid((w + kTileW - 1) / kTileW, (h + kTileH - 1) / kTileH, 3);
  const int num_tiles = static_cast<int>(tile_grid.x * tile_grid.y * tile_grid.z);
  const double count = 3.0 * static_cast<double>(height) * static_cast<double>(width);
  const float l1_scale = static_cast<float>((1.0 - lambda_dssim) / count);
  const float ssim_scale = static_cast<float>(-lambda_dssim / count);

  torch::Tensor grad = torch::empty_like(x);
  torch::Tensor loss = torch::empty({}, x.options());
  torch::Tensor tile_sums = torch::empty({2, num_tiles}, x.options().dtype(torch::kFloat64));
  double* ssim_sums = tile_sums.data_ptr<double>();
  double* l1_sums = ssim_sums + num_tiles;
  const uint8_t* y_ptr = y.data_ptr<uint8_t>();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  if (lambda_dssim == 0.0) {
    l1_kernel<<<tile_grid, tile_block, 0, stream>>>(x.data_ptr<float>(), y_ptr, channels,
                                                    bg.data_ptr<float>(), h, w, l1_scale,
                                                    grad.data_ptr<float>(), ssim_sums, l1_sums);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    const GaussianTaps taps = gaussian_taps();
    torch::Tensor d_moments = torch::empty({3, 3, height, width}, x.options());
    ssim_forward_kernel<<<tile_grid, tile_block, 0, stream>>>(
        x.data_ptr<float>(), y_ptr, channels, bg.data_ptr<float>(), h, w, taps,
        d_moments.data_ptr<float>(), ssim_sums, l1_sums);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ssim_backward_kernel<<<tile_grid, tile_block, 0, stream>>>(
        x.data_ptr<float>(), y_ptr, channels, bg.data_ptr<float>(), h, w, taps,
        d_moments.data_ptr<float>(), l1_scale, ssim_scale, grad.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  finish_loss_kernel<<<1, kReduceThreads, 0, stream>>>(ssim_sums, l1_sums, num_tiles, count,
                                                       lambda_dssim, loss.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {loss, grad};
}
