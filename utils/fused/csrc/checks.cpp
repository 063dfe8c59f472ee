// Argument checks of the fused training kernels (see checks.h for why they are here).
#include "checks.h"

#include <climits>
#include <cmath>
#include <limits>
#include <string>

namespace stga_fused {
namespace {

// Messages are built from strings only: streaming numbers into the message (c10::str) crashed
// the process instead of raising on the CUDA machine, so numbers and shapes go through
// std::to_string here.
template <typename T>
std::string num(T value) {
  return std::to_string(value);
}

std::string shape(c10::IntArrayRef sizes) {
  std::string text = "(";
  for (size_t i = 0; i < sizes.size(); ++i) text += (i ? ", " : "") + std::to_string(sizes[i]);
  return text + ")";
}

std::string where(const char* list, size_t i) {
  return std::string("selective_adam_step: ") + list + "[" + std::to_string(i) + "]";
}

void check_like_param(const torch::Tensor& t, const torch::Tensor& p, const char* list, size_t i,
                      bool must_be_contiguous) {
  TORCH_CHECK(t.defined(), where(list, i), " is undefined");
  TORCH_CHECK(t.device() == p.device(), where(list, i), " is on ", t.device().str(),
              " but params[", num(i), "] is on ", p.device().str());
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, where(list, i), " must be float32, got ",
              c10::toString(t.scalar_type()));
  TORCH_CHECK(t.sizes() == p.sizes(), where(list, i), " has shape ", shape(t.sizes()),
              " but params[", num(i), "] has shape ", shape(p.sizes()));
  TORCH_CHECK(!must_be_contiguous || t.is_contiguous(), where(list, i),
              " must be contiguous (it is updated in place)");
}

}  // namespace

void check_loss_inputs(const torch::Tensor& image, const torch::Tensor& target,
                       const torch::Tensor& background, double lambda_dssim) {
  TORCH_CHECK(image.is_cuda(), "photometric_loss_with_grad: image must be a CUDA tensor");
  TORCH_CHECK(image.scalar_type() == torch::kFloat32,
              "photometric_loss_with_grad: image must be float32, got ",
              c10::toString(image.scalar_type()));
  TORCH_CHECK(image.dim() == 3 && image.size(0) == 3,
              "photometric_loss_with_grad: image must be (3, H, W), got ", shape(image.sizes()));
  const int64_t height = image.size(1);
  const int64_t width = image.size(2);
  TORCH_CHECK(height > 0 && width > 0, "photometric_loss_with_grad: empty image ",
              shape(image.sizes()));
  TORCH_CHECK(3 * height * width <= std::numeric_limits<int>::max(),
              "photometric_loss_with_grad: image too large, ", shape(image.sizes()));
  TORCH_CHECK(target.device() == image.device(),
              "photometric_loss_with_grad: target must be on the image's device (",
              image.device().str(), "), got ", target.device().str());
  TORCH_CHECK(target.scalar_type() == torch::kUInt8,
              "photometric_loss_with_grad: target must be uint8, got ",
              c10::toString(target.scalar_type()));
  TORCH_CHECK(target.dim() == 3 && target.size(0) == height && target.size(1) == width &&
                  (target.size(2) == 3 || target.size(2) == 4),
              "photometric_loss_with_grad: target must be (H, W, 3) or (H, W, 4) with H, W = ",
              num(height), ", ", num(width), " of the image; got ", shape(target.sizes()));
  TORCH_CHECK(background.device() == image.device(),
              "photometric_loss_with_grad: background must be on the image's device (",
              image.device().str(), "), got ", background.device().str());
  TORCH_CHECK(background.scalar_type() == torch::kFloat32,
              "photometric_loss_with_grad: background must be float32, got ",
              c10::toString(background.scalar_type()));
  TORCH_CHECK(background.numel() == 3,
              "photometric_loss_with_grad: background must hold 3 values, got ",
              shape(background.sizes()));
  TORCH_CHECK(std::isfinite(lambda_dssim),
              "photometric_loss_with_grad: lambda_dssim must be finite, got ", num(lambda_dssim));
}

void check_adam_inputs(const std::vector<torch::Tensor>& params,
                       const std::vector<torch::Tensor>& grads,
                       const std::vector<torch::Tensor>& exp_avgs,
                       const std::vector<torch::Tensor>& exp_avg_sqs,
                       const std::vector<torch::Tensor>& steps, const std::vector<double>& lrs,
                       const torch::Tensor& rows, bool all_rows) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n &&
                  steps.size() == n && lrs.size() == n,
              "selective_adam_step: params, grads, exp_avgs, exp_avg_sqs, steps and lrs must "
              "have the same length, got ",
              num(n), ", ", num(grads.size()), ", ", num(exp_avgs.size()), ", ",
              num(exp_avg_sqs.size()), ", ", num(steps.size()), " and ", num(lrs.size()));
  if (n == 0) return;

  const torch::Device device = params[0].device();
  TORCH_CHECK(device.is_cuda(), "selective_adam_step: params[0] must be a CUDA tensor, got ",
              device.str());
  for (size_t i = 0; i < n; ++i) {
    const torch::Tensor& p = params[i];
    TORCH_CHECK(p.defined(), where("params", i), " is undefined");
    TORCH_CHECK(p.device() == device, where("params", i), " is on ", p.device().str(),
                " but params[0] is on ", device.str(), " (one device per call)");
    TORCH_CHECK(p.scalar_type() == torch::kFloat32, where("params", i),
                " must be float32, got ", c10::toString(p.scalar_type()));
    TORCH_CHECK(p.dim() >= 1, where("params", i), " must have a row dimension, got a 0-d tensor");
    TORCH_CHECK(p.is_contiguous(), where("params", i),
                " must be contiguous (it is updated in place)");
    check_like_param(grads[i], p, "grads", i, false);
    check_like_param(exp_avgs[i], p, "exp_avgs", i, true);
    check_like_param(exp_avg_sqs[i], p, "exp_avg_sqs", i, true);
    const torch::Tensor& s = steps[i];
    TORCH_CHECK(s.defined(), where("steps", i), " is undefined");
    TORCH_CHECK(s.device() == device, where("steps", i), " is on ", s.device().str(),
                " but params[", num(i), "] is on ", device.str());
    TORCH_CHECK(s.scalar_type() == torch::kInt64, where("steps", i), " must be int64, got ",
                c10::toString(s.scalar_type()));
    TORCH_CHECK(s.dim() == 1 && s.size(0) == p.size(0), where("steps", i),
                " must have shape (", num(p.size(0)), ",) like the rows of params[", num(i),
                "], got ", shape(s.sizes()));
    TORCH_CHECK(s.is_contiguous(), where("steps", i),
                " must be contiguous (it is updated in place)");
    TORCH_CHECK(p.size(0) < INT_MAX / 32, where("params", i), " has too many rows (",
                num(p.size(0)), ") for one launch");
    if (!all_rows) {
      TORCH_CHECK(p.size(0) == params[0].size(0), where("params", i), " has ", num(p.size(0)),
                  " rows but params[0] has ", num(params[0].size(0)),
                  " (the row indices apply to every tensor)");
    }
  }

  if (!all_rows) {
    TORCH_CHECK(rows.defined(), "selective_adam_step: rows is undefined (all_rows is false)");
    TORCH_CHECK(rows.device() == device, "selective_adam_step: rows is on ", rows.device().str(),
                " but the params are on ", device.str());
    TORCH_CHECK(rows.scalar_type() == torch::kInt64,
                "selective_adam_step: rows must be int64, got ", c10::toString(rows.scalar_type()));
    TORCH_CHECK(rows.dim() == 1, "selective_adam_step: rows must be 1-D, got shape ",
                shape(rows.sizes()));
  }
}

void check_rows(const torch::Tensor& t, const char* name, int64_t n, int64_t width) {
  TORCH_CHECK(t.is_cuda() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(), name,
              " must be a contiguous float32 CUDA tensor");
  TORCH_CHECK(t.size(0) == n && t.numel() == n * width, name, " must have ", num(n), " rows of ",
              num(width), " values, got shape ", shape(t.sizes()));
}

const float* optional_rows(const torch::Tensor& t, const char* name, int64_t n, int64_t width) {
  if (!t.defined() || t.numel() == 0) return nullptr;
  check_rows(t, name, n, width);
  return t.data_ptr<float>();
}

const bool* optional_mask(const torch::Tensor& mask, int64_t n) {
  if (!mask.defined() || mask.numel() == 0) return nullptr;
  TORCH_CHECK(mask.is_cuda() && mask.scalar_type() == torch::kBool && mask.dim() == 1 &&
                  mask.size(0) == n && mask.is_contiguous(),
              "trainable must be a contiguous (N,) bool CUDA tensor, N = ", num(n));
  return mask.data_ptr<bool>();
}

void check_pose_inputs(const torch::Tensor& triangles, const torch::Tensor& binding,
                       const torch::Tensor& xyz, const torch::Tensor& scaling,
                       const torch::Tensor& rotation, const torch::Tensor& opacity) {
  TORCH_CHECK(triangles.is_cuda() && triangles.scalar_type() == torch::kFloat32 &&
                  triangles.is_contiguous() && triangles.dim() == 3 && triangles.size(1) == 3 &&
                  triangles.size(2) == 3,
              "triangles must be a contiguous (F, 3, 3) float32 CUDA tensor");
  TORCH_CHECK(binding.is_cuda() && binding.scalar_type() == torch::kInt64 && binding.dim() == 1 &&
                  binding.is_contiguous(),
              "binding must be a contiguous (N,) int64 CUDA tensor");
  const int64_t n = binding.size(0);
  check_rows(xyz, "xyz", n, 3);
  check_rows(scaling, "scaling", n, 3);
  check_rows(rotation, "rotation", n, 4);
  check_rows(opacity, "opacity", n, 1);
}

}  // namespace stga_fused
