// Argument checks of the fused training kernels' entry points.
//
// Kept apart from the kernels (one place to read what each entry point accepts). Messages are
// built from strings only (checks.cpp): on the CUDA 13 / torch 2.11 machine, a TORCH_CHECK
// message that streamed a number or a shape crashed the process instead of raising.
#pragma once
#include <torch/extension.h>

#include <vector>

namespace stga_fused {

void check_loss_inputs(const torch::Tensor& image, const torch::Tensor& target,
                       const torch::Tensor& background, double lambda_dssim);

void check_adam_inputs(const std::vector<torch::Tensor>& params,
                       const std::vector<torch::Tensor>& grads,
                       const std::vector<torch::Tensor>& exp_avgs,
                       const std::vector<torch::Tensor>& exp_avg_sqs,
                       const std::vector<torch::Tensor>& steps, const std::vector<double>& lrs,
                       const torch::Tensor& rows, bool all_rows);

void check_pose_inputs(const torch::Tensor& triangles, const torch::Tensor& binding,
                       const torch::Tensor& xyz, const torch::Tensor& scaling,
                       const torch::Tensor& rotation, const torch::Tensor& opacity);
void check_rows(const torch::Tensor& t, const char* name, int64_t n, int64_t width);
// The data of an optional (N, width) float tensor, or nullptr when it is undefined or empty.
const float* optional_rows(const torch::Tensor& t, const char* name, int64_t n, int64_t width);
// The data of an optional (N,) bool mask, or nullptr when it is undefined or empty.
const bool* optional_mask(const torch::Tensor& mask, int64_t n);

}  // namespace stga_fused
