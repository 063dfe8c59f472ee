// Selective Adam step: Adam on a subset of rows (Gaussians) of several row-major tensors, with a
// step count per row, in one kernel launch for all the tensors.
//
// The maths is that of SelectiveAdam._update in training/selective_adam.py (the reference, float32):
//   t = step[r] + 1;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps);  step[r] = t.
//
// Design: a group of G lanes of one warp per row (G a power of two, min(32, D rounded up), D the
// floats per row). The group's first lane alone reads and writes step[r] and computes the two
// bias corrections, which reach the other lanes of the group by a warp shuffle; the lanes then
// stride over the row's D contiguous floats. Nothing else reads step[r], so the increment cannot
// race with the elements of the row, and no second kernel is needed; the row of an element is
// the group's row (no per-element division by D), the row index and step are loaded once per
// row, and the powers are computed once per row. The tensors of one call share one launch: each
// gets a contiguous range of blocks (a small table in the kernel parameters).
//
// --use_fast_math (the loader's flag) turns powf into the approximate __powf (relative error
// ~1e-7 * t, which 1 - b2^t ~ 1e-3 would amplify to ~1e-4), and '/' and sqrtf into approximate
// versions. So the powers use pow on double (fast math leaves double precision alone) of the
// float32 betas, rounded to float like the reference's float32 pow, and the element maths uses
// the explicitly rounded intrinsics (__fdiv_rn, __fsqrt_rn, __fmaf_rn, ...) in the reference's
// order of operations. The flag's flush-to-zero remains: moments below 1e-38 (a row whose
// gradient has been zero for hundreds of steps) become 0 instead of subnormal, a change far
// below anything that reaches the parameters.
//
// The row indices must be unique (as in the reference, whose index_copy_ would keep an
// arbitrary one of the duplicates): two groups on one row would race.
#include <torch/extension.h>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <climits>
#include <cstdint>
#include <string>
#include <vector>

#include "checks.h"

namespace {

constexpr int kThreads = 256;  // threads per block
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr int kMaxTensors = 16;  // tensors per launch (kernel parameter space); more: more launches

struct AdamTensor {
  float* param;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  int64_t* step;
  int64_t num_rows;  // N, the first dimension
  int64_t row_size;  // D, floats per row
  float lr;
  int group;        // lanes per row: a power of two, at most 32
  int block_begin;  // first block of this tensor in the grid
};

struct AdamBatch {
  AdamTensor tensors[kMaxTensors];
  int count;
};

struct AdamHyper {
  float beta1, beta2;                    // float32, as the reference multiplies
  float one_minus_beta1, one_minus_beta2;  // 1 - beta in double, then float32 (as the reference)
  double beta1_pow, beta2_pow;           // the float32 betas in double, bases of the powers
  float eps;
};

__global__ void __launch_bounds__(kThreads)
    selective_adam_kernel(const AdamBatch batch, const int64_t* __restrict__ rows,
                          const int64_t num_selected, const bool all_rows, const AdamHyper h) {
  // This block's tensor: the last one whose first block is at most blockIdx.x.
  const int block = static_cast<int>(blockIdx.x);
  int k = 0;
  while (k + 1 < batch.count && block >= batch.tensors[k + 1].block_begin) ++k;
  const AdamTensor& a = batch.tensors[k];

  const int group = a.group;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int rows_per_warp = 32 / group;
  const int64_t selected = all_rows ? a.num_rows : num_selected;
  const int64_t warp_first =
      (static_cast<int64_t>(block - a.block_begin) * kWarpsPerBlock + warp) * rows_per_warp;
  if (warp_first >= selected) return;  // the same for the whole warp: before the shuffles

  const int64_t slot = warp_first + lane / group;  // position in the list of updated rows
  const int offset = lane & (group - 1);           // this lane's first element in the row
  int64_t row = -1;
  if (slot < selected) row = all_rows ? slot : rows[slot];
  // Out-of-range rows are skipped rather than written out of bounds.
  const bool valid = row >= 0 && row < a.num_rows;

  float bias1 = 1.0f, bias2 = 1.0f;
  if (valid && offset == 0) {
    const int64_t t = a.step[row] + 1;
    a.step[row] = t;  // only this lane touches step[row]
    const double td = static_cast<double>(t);
    bias1 = __fsub_rn(1.0f, static_cast<float>(pow(h.beta1_pow, td)));
    bias2 = __fsub_rn(1.0f, static_cast<float>(pow(h.beta2_pow, td)));
  }
  if (group > 1) {  // every lane of the warp takes part (the early return above is warp-wide)
    bias1 = __shfl_sync(0xffffffffu, bias1, 0, group);
    bias2 = __shfl_sync(0xffffffffu, bias2, 0, group);
  }
  if (!valid) return;

  const float neg_lr = -a.lr;
  const int64_t base = row * a.row_size;
  for (int64_t j = base + offset, end = base + a.row_size; j < end; j += group) {
    const float g = a.grad[j];
    const float m = __fmaf_rn(h.one_minus_beta1, g, __fmul_rn(h.beta1, a.exp_avg[j]));
    const float v =
        __fmaf_rn(__fmul_rn(h.one_minus_beta2, g), g, __fmul_rn(h.beta2, a.exp_avg_sq[j]));
    const float denom = __fadd_rn(__fsqrt_rn(__fdiv_rn(v, bias2)), h.eps);
    a.exp_avg[j] = m;
    a.exp_avg_sq[j] = v;
    a.param[j] = __fmaf_rn(neg_lr, __fdiv_rn(__fdiv_rn(m, bias1), denom), a.param[j]);
  }
}

int lanes_per_row(int64_t row_size) {
  int group = 1;
  while (group < 32 && group < row_size) group *= 2;
  return group;
}

}  // namespace

void selective_adam_step(const std::vector<torch::Tensor>& params,
                         const std::vector<torch::Tensor>& grads,
                         const std::vector<torch::Tensor>& exp_avgs,
                         const std::vector<torch::Tensor>& exp_avg_sqs,
                         const std::vector<torch::Tensor>& steps, const std::vector<double>& lrs,
                         const torch::Tensor& rows, bool all_rows, double beta1, double beta2,
                         double eps) {
  stga_fused::check_adam_inputs(params, grads, exp_avgs, exp_avg_sqs, steps, lrs, rows, all_rows);
  const size_t n = params.size();
  if (n == 0) return;
  const torch::Device device = params[0].device();
  torch::Tensor row_list;
  int64_t num_selected = 0;
  if (!all_rows) {
    num_selected = rows.numel();
    if (num_selected == 0) return;
    row_list = rows.contiguous();
  }

  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();

  AdamHyper h;
  h.beta1 = static_cast<float>(beta1);
  h.beta2 = static_cast<float>(beta2);
  h.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  h.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  h.beta1_pow = static_cast<double>(h.beta1);
  h.beta2_pow = static_cast<double>(h.beta2);
  h.eps = static_cast<float>(eps);
  const int64_t* rows_ptr = all_rows ? nullptr : row_list.data_ptr<int64_t>();

  // Contiguous gradients (copies where needed) stay referenced until after the launches; their
  // memory is then released in stream order by the caching allocator, so the kernel still sees it.
  std::vector<torch::Tensor> contiguous_grads;
  contiguous_grads.reserve(n);

  AdamBatch batch;
  batch.count = 0;
  int64_t blocks = 0;
  auto launch = [&]() {
    if (batch.count > 0 && blocks > 0) {
      selective_adam_kernel<<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
          batch, rows_ptr, num_selected, all_rows, h);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    batch.count = 0;
    blocks = 0;
  };

  for (size_t i = 0; i < n; ++i) {
    const torch::Tensor& p = params[i];
    if (p.size(0) == 0) continue;  // no rows (rows of no floats still count their steps)
    contiguous_grads.push_back(grads[i].contiguous());
    const int64_t row_size = p.numel() / p.size(0);
    const int group = lanes_per_row(row_size);
    const int64_t rows_per_block = static_cast<int64_t>(kWarpsPerBlock) * (32 / group);
    const int64_t selected = all_rows ? p.size(0) : num_selected;
    const int64_t own_blocks = (selected + rows_per_block - 1) / rows_per_block;
    if (batch.count == kMaxTensors || blocks + own_blocks > INT_MAX) launch();

    AdamTensor& a = batch.tensors[batch.count++];
    a.param = p.data_ptr<float>();
    a.grad = contiguous_grads.back().data_ptr<float>();
    a.exp_avg = exp_avgs[i].data_ptr<float>();
    a.exp_avg_sq = exp_avg_sqs[i].data_ptr<float>();
    a.step = steps[i].data_ptr<int64_t>();
    a.num_rows = p.size(0);
    a.row_size = row_size;
    a.lr = static_cast<float>(lrs[i]);
    a.group = group;
    a.block_begin = static_cast<int>(blocks);
    blocks += own_blocks;
  }
  launch();
}
