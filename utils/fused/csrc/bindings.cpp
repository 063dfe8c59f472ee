// Python bindings of STGA's fused training kernels (implementations in the .cu files).
#include <torch/extension.h>

#include <vector>

// loss.cu: (1 - lambda) L1 + lambda (1 - SSIM) of a render against a uint8 target, and its
// gradient with respect to the render, in one forward computation.
std::vector<torch::Tensor> photometric_loss_with_grad(const torch::Tensor& image,
                                                      const torch::Tensor& target,
                                                      const torch::Tensor& background,
                                                      double lambda_dssim);

// adam.cu: Adam on the listed rows (or on every row), per-row step counts.
void selective_adam_step(const std::vector<torch::Tensor>& params,
                         const std::vector<torch::Tensor>& grads,
                         const std::vector<torch::Tensor>& exp_avgs,
                         const std::vector<torch::Tensor>& exp_avg_sqs,
                         const std::vector<torch::Tensor>& steps, const std::vector<double>& lrs,
                         const torch::Tensor& rows, bool all_rows, double beta1, double beta2,
                         double eps);

// pose.cu: face-local Gaussians to world space with one frame's mesh, and the backward pass.
std::vector<torch::Tensor> pose_forward(const torch::Tensor& triangles,
                                        const torch::Tensor& binding, const torch::Tensor& xyz,
                                        const torch::Tensor& scaling,
                                        const torch::Tensor& rotation,
                                        const torch::Tensor& opacity, bool face_scale);
std::vector<torch::Tensor> pose_backward(const torch::Tensor& triangles,
                                         const torch::Tensor& binding, const torch::Tensor& xyz,
                                         const torch::Tensor& scaling,
                                         const torch::Tensor& rotation,
                                         const torch::Tensor& opacity, bool face_scale,
                                         const torch::Tensor& trainable,
                                         const torch::Tensor& grad_xyz,
                                         const torch::Tensor& grad_scales,
                                         const torch::Tensor& grad_rotations,
                                         const torch::Tensor& grad_opacity);
// pose.cu: train.py's position and scale regularisers over the trainable rows, and their
// gradient, in one pass.
std::vector<torch::Tensor> regulariser_with_grad(const torch::Tensor& xyz,
                                                 const torch::Tensor& scaling,
                                                 const torch::Tensor& trainable, int64_t count,
                                                 double lambda_xyz, double threshold_xyz,
                                                 double lambda_scale, double threshold_scale);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("photometric_loss_with_grad", &photometric_loss_with_grad,
        "loss (0-d) and d loss / d image of (1-l) L1 + l (1 - SSIM) against a uint8 target");
  m.def("selective_adam_step", &selective_adam_step,
        "in-place Adam step on the given rows of every parameter");
  m.def("pose_forward", &pose_forward, "world xyz, scales, rotations, opacity");
  m.def("pose_backward", &pose_backward, "gradients of the local parameters");
  m.def("regulariser_with_grad", &regulariser_with_grad,
        "position and scale regularisers (0-d) and their gradients");
}
