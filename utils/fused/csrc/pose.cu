// Posing of mesh-bound Gaussians (scene/binding.py's convention) and its backward pass, one
// thread per Gaussian: the face frame is rebuilt from the triangle in registers, so no (F, 3, 3)
// frame tensors are written or read. Also the local-frame regularisers of train.py, whose
// value and gradient come out of one pass.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <vector>

#include "checks.h"

namespace {

constexpr float kNormEps = 1e-12f;  // F.normalize's eps and the face-size clamp of face_frames
constexpr int kThreads = 256;

struct Vec3 {
  float x, y, z;
};
__device__ __forceinline__ Vec3 operator+(Vec3 a, Vec3 b) { return {a.x + b.x, a.y + b.y, a.z + b.z}; }
__device__ __forceinline__ Vec3 operator-(Vec3 a, Vec3 b) { return {a.x - b.x, a.y - b.y, a.z - b.z}; }
__device__ __forceinline__ Vec3 operator*(Vec3 a, float s) { return {a.x * s, a.y * s, a.z * s}; }
__device__ __forceinline__ float dot(Vec3 a, Vec3 b) { return a.x * b.x + a.y * b.y + a.z * b.z; }
__device__ __forceinline__ float length(Vec3 a) { return sqrtf(dot(a, a)); }
__device__ __forceinline__ Vec3 cross(Vec3 a, Vec3 b) {
  return {a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x};
}

// The local frame of one face: columns x, y, n of R, the centroid and the face size.
struct FaceFrame {
  Vec3 x, y, n, origin;
  float size;
};

__device__ __forceinline__ FaceFrame face_frame(const float* __restrict__ tri) {
  const Vec3 v1{tri[0], tri[1], tri[2]}, v2{tri[3], tri[4], tri[5]}, v3{tri[6], tri[7], tri[8]};
  FaceFrame f;
  f.origin = (v1 + v2 + v3) * (1.0f / 3.0f);
  const Vec3 a = v1 - f.origin;
  f.x = a * (1.0f / fmaxf(length(a), kNormEps));
  const Vec3 e = v2 - v1;
  const Vec3 c = cross(e, v3 - v1);
  const float area2 = length(c);
  f.n = c * (1.0f / fmaxf(area2, kNormEps));
  f.y = cross(f.n, f.x);
  const float edge = length(e);
  f.size = 0.5f * (edge + area2 / fmaxf(edge, kNormEps));
  return f;
}

// R x for R = [x | y | n], and R^T v.
__device__ __forceinline__ Vec3 rotate(const FaceFrame& f, Vec3 v) {
  return f.x * v.x + f.y * v.y + f.n * v.z;
}
__device__ __forceinline__ Vec3 rotate_back(const FaceFrame& f, Vec3 v) {
  return {dot(f.x, v), dot(f.y, v), dot(f.n, v)};
}

// w-first unit quaternion of R with w >= 0, choosing the best-conditioned of the four standard
// formulas exactly as scene/binding.py's matrix_to_quaternion does.
__device__ __forceinline__ float4 frame_quaternion(const FaceFrame& f) {
  // R[i][j]: row i, column j; the columns are x, y, n.
  const float m00 = f.x.x, m10 = f.x.y, m20 = f.x.z;
  const float m01 = f.y.x, m11 = f.y.y, m21 = f.y.z;
  const float m02 = f.n.x, m12 = f.n.y, m22 = f.n.z;
  const float trace = m00 + m11 + m22;
  const float p0 = 1.0f + trace, p1 = 1.0f + m00 - m11 - m22, p2 = 1.0f - m00 + m11 - m22,
              p3 = 1.0f - m00 - m11 + m22;
  const float d21 = m21 - m12, d02 = m02 - m20, d10 = m10 - m01;
  const float s01 = m01 + m10, s02 = m02 + m20, s12 = m12 + m21;
  int best = 0;
  float pivot = p0;
  if (p1 > pivot) { best = 1; pivot = p1; }
  if (p2 > pivot) { best = 2; pivot = p2; }
  if (p3 > pivot) { best = 3; pivot = p3; }
  const float r = sqrtf(fmaxf(pivot, 1e-12f));
  const float inv = 1.0f / (2.0f * r);
  float4 q;
  if (best == 0) q = make_float4(r * r, d21, d02, d10);
  else if (best == 1) q = make_float4(d21, r * r, s01, s02);
  else if (best == 2) q = make_float4(d02, s01, r * r, s12);
  else q = make_float4(d10, s02, s12, r * r);
  q = make_float4(q.x * inv, q.y * inv, q.z * inv, q.w * inv);
  const float norm = sqrtf(q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w);
  float s = 1.0f / fmaxf(norm, kNormEps);
  if (q.x * s < 0.0f) s = -s;
  return make_float4(q.x * s, q.y * s, q.z * s, q.w * s);
}

// Hamilton product a * b, w first (components x = w, y = x, z = y, w = z of float4).
__device__ __forceinline__ float4 quat_mul(float4 a, float4 b) {
  return make_float4(a.x * b.x - a.y * b.y - a.z * b.z - a.w * b.w,
                     a.x * b.y + a.y * b.x + a.z * b.w - a.w * b.z,
                     a.x * b.z - a.y * b.w + a.z * b.x + a.w * b.y,
                     a.x * b.w + a.y * b.z - a.z * b.y + a.w * b.x);
}

// d(a * b)/db transposed, applied to g: the gradient of b.
__device__ __forceinline__ float4 quat_mul_grad_b(float4 a, float4 g) {
  return make_float4(a.x * g.x + a.y * g.y + a.z * g.z + a.w * g.w,
                     -a.y * g.x + a.x * g.y + a.w * g.z - a.z * g.w,
                     -a.z * g.x - a.w * g.y + a.x * g.z + a.y * g.w,
                     -a.w * g.x + a.z * g.y - a.y * g.z + a.x * g.w);
}

__device__ __forceinline__ float4 load4(const float* p) { return make_float4(p[0], p[1], p[2], p[3]); }

__global__ void pose_forward_kernel(int n, const float* __restrict__ triangles,
                                    const int64_t* __restrict__ binding,
                                    const float* __restrict__ xyz, const float* __restrict__ scaling,
                                    const float* __restrict__ rotation,
                                    const float* __restrict__ opacity, bool face_scale,
                                    float* __restrict__ out_xyz, float* __restrict__ out_scales,
                                    float* __restrict__ out_rotations,
                                    float* __restrict__ out_opacity) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const FaceFrame f = face_frame(triangles + 9 * binding[i]);
  const float k = face_scale ? f.size : 1.0f;
  const Vec3 local{xyz[3 * i], xyz[3 * i + 1], xyz[3 * i + 2]};
  const Vec3 world = rotate(f, local * k) + f.origin;
  out_xyz[3 * i] = world.x;
  out_xyz[3 * i + 1] = world.y;
  out_xyz[3 * i + 2] = world.z;
  for (int c = 0; c < 3; ++c) out_scales[3 * i + c] = expf(scaling[3 * i + c]) * k;
  const float4 q = load4(rotation + 4 * i);
  const float qn = 1.0f / fmaxf(sqrtf(q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w), kNormEps);
  const float4 r = quat_mul(frame_quaternion(f), make_float4(q.x * qn, q.y * qn, q.z * qn, q.w * qn));
  out_rotations[4 * i] = r.x;
  out_rotations[4 * i + 1] = r.y;
  out_rotations[4 * i + 2] = r.z;
  out_rotations[4 * i + 3] = r.w;
  out_opacity[i] = 1.0f / (1.0f + expf(-opacity[i]));
}

__global__ void pose_backward_kernel(int n, const float* __restrict__ triangles,
                                     const int64_t* __restrict__ binding,
                                     const float* __restrict__ scaling,
                                     const float* __restrict__ rotation,
                                     const float* __restrict__ opacity, bool face_scale,
                                     const bool* __restrict__ trainable,
                                     const float* __restrict__ g_xyz,
                                     const float* __restrict__ g_scales,
                                     const float* __restrict__ g_rotations,
                                     const float* __restrict__ g_opacity,
                                     float* __restrict__ d_xyz, float* __restrict__ d_scaling,
                                     float* __restrict__ d_rotation,
                                     float* __restrict__ d_opacity) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  if (trainable != nullptr && !trainable[i]) {  // frozen: rendered as a constant
    for (int c = 0; c < 3; ++c) d_xyz[3 * i + c] = d_scaling[3 * i + c] = 0.0f;
    for (int c = 0; c < 4; ++c) d_rotation[4 * i + c] = 0.0f;
    d_opacity[i] = 0.0f;
    return;
  }
  const FaceFrame f = face_frame(triangles + 9 * binding[i]);
  const float k = face_scale ? f.size : 1.0f;
  if (g_xyz != nullptr) {
    const Vec3 d = rotate_back(f, Vec3{g_xyz[3 * i], g_xyz[3 * i + 1], g_xyz[3 * i + 2]}) * k;
    d_xyz[3 * i] = d.x;
    d_xyz[3 * i + 1] = d.y;
    d_xyz[3 * i + 2] = d.z;
  } else {
    for (int c = 0; c < 3; ++c) d_xyz[3 * i + c] = 0.0f;
  }
  for (int c = 0; c < 3; ++c)
    d_scaling[3 * i + c] =
        g_scales != nullptr ? g_scales[3 * i + c] * expf(scaling[3 * i + c]) * k : 0.0f;
  if (g_rotations != nullptr) {
    const float4 q = load4(rotation + 4 * i);
    const float len = sqrtf(q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w);
    const float4 g = quat_mul_grad_b(frame_quaternion(f), load4(g_rotations + 4 * i));
    float4 d;
    if (len > kNormEps) {  // through q / |q|: (I - u u^T) g / |q|
      const float inv = 1.0f / len;
      const float4 u = make_float4(q.x * inv, q.y * inv, q.z * inv, q.w * inv);
      const float ug = u.x * g.x + u.y * g.y + u.z * g.z + u.w * g.w;
      d = make_float4((g.x - u.x * ug) * inv, (g.y - u.y * ug) * inv, (g.z - u.z * ug) * inv,
                      (g.w - u.w * ug) * inv);
    } else {  // q / eps: linear
      const float inv = 1.0f / kNormEps;
      d = make_float4(g.x * inv, g.y * inv, g.z * inv, g.w * inv);
    }
    d_rotation[4 * i] = d.x;
    d_rotation[4 * i + 1] = d.y;
    d_rotation[4 * i + 2] = d.z;
    d_rotation[4 * i + 3] = d.w;
  } else {
    for (int c = 0; c < 4; ++c) d_rotation[4 * i + c] = 0.0f;
  }
  if (g_opacity != nullptr) {
    const float s = 1.0f / (1.0f + expf(-opacity[i]));
    d_opacity[i] = g_opacity[i] * s * (1.0f - s);
  } else {
    d_opacity[i] = 0.0f;
  }
}

// Per row: lambda_xyz relu(|mu| - t_xyz) + lambda_scale |relu(exp(s) - t_scale)|, each scaled by
// 1 / count (a mean over the trainable rows), and its gradient; zero for frozen rows.
__global__ void regulariser_kernel(int n, const float* __restrict__ xyz,
                                   const float* __restrict__ scaling,
                                   const bool* __restrict__ trainable, float lambda_xyz,
                                   float threshold_xyz, float lambda_scale,
                                   float threshold_scale, float inv_count,
                                   float* __restrict__ row_loss, float* __restrict__ d_xyz,
                                   float* __restrict__ d_scaling) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float loss = 0.0f;
  Vec3 gx{0.0f, 0.0f, 0.0f}, gs{0.0f, 0.0f, 0.0f};
  if (trainable == nullptr || trainable[i]) {
    const Vec3 mu{xyz[3 * i], xyz[3 * i + 1], xyz[3 * i + 2]};
    const float len = length(mu);
    if (lambda_xyz > 0.0f && len > threshold_xyz) {
      loss += lambda_xyz * (len - threshold_xyz);
      gx = mu * (lambda_xyz * inv_count / len);
    }
    if (lambda_scale > 0.0f) {
      const Vec3 s{expf(scaling[3 * i]), expf(scaling[3 * i + 1]), expf(scaling[3 * i + 2])};
      const Vec3 e{fmaxf(s.x - threshold_scale, 0.0f), fmaxf(s.y - threshold_scale, 0.0f),
                   fmaxf(s.z - threshold_scale, 0.0f)};
      const float norm = length(e);
      if (norm > 0.0f) {
        loss += lambda_scale * norm;
        const float w = lambda_scale * inv_count / norm;
        gs = Vec3{e.x * s.x * w, e.y * s.y * w, e.z * s.z * w};
      }
    }
  }
  row_loss[i] = loss * inv_count;
  d_xyz[3 * i] = gx.x;
  d_xyz[3 * i + 1] = gx.y;
  d_xyz[3 * i + 2] = gx.z;
  d_scaling[3 * i] = gs.x;
  d_scaling[3 * i + 1] = gs.y;
  d_scaling[3 * i + 2] = gs.z;
}

int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

}  // namespace

std::vector<torch::Tensor> pose_forward(const torch::Tensor& triangles,
                                        const torch::Tensor& binding, const torch::Tensor& xyz,
                                        const torch::Tensor& scaling,
                                        const torch::Tensor& rotation,
                                        const torch::Tensor& opacity, bool face_scale) {
  stga_fused::check_pose_inputs(triangles, binding, xyz, scaling, rotation, opacity);
  const int64_t n = binding.size(0);
  auto out_xyz = torch::empty_like(xyz), out_scales = torch::empty_like(scaling),
       out_rotations = torch::empty_like(rotation), out_opacity = torch::empty_like(opacity);
  if (n > 0) {
    pose_forward_kernel<<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        static_cast<int>(n), triangles.data_ptr<float>(), binding.data_ptr<int64_t>(),
        xyz.data_ptr<float>(), scaling.data_ptr<float>(), rotation.data_ptr<float>(),
        opacity.data_ptr<float>(), face_scale, out_xyz.data_ptr<float>(),
        out_scales.data_ptr<float>(), out_rotations.data_ptr<float>(),
        out_opacity.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {out_xyz, out_scales, out_rotations, out_opacity};
}

std::vector<torch::Tensor> pose_backward(const torch::Tensor& triangles,
                                         const torch::Tensor& binding, const torch::Tensor& xyz,
                                         const torch::Tensor& scaling,
                                         const torch::Tensor& rotation,
                                         const torch::Tensor& opacity, bool face_scale,
                                         const torch::Tensor& trainable,
                                         const torch::Tensor& grad_xyz,
                                         const torch::Tensor& grad_scales,
                                         const torch::Tensor& grad_rotations,
                                         const torch::Tensor& grad_opacity) {
  stga_fused::check_pose_inputs(triangles, binding, xyz, scaling, rotation, opacity);
  const int64_t n = binding.size(0);
  const bool* mask = stga_fused::optional_mask(trainable, n);
  const float* gx = stga_fused::optional_rows(grad_xyz, "grad_xyz", n, 3);
  const float* gs = stga_fused::optional_rows(grad_scales, "grad_scales", n, 3);
  const float* gr = stga_fused::optional_rows(grad_rotations, "grad_rotations", n, 4);
  const float* go = stga_fused::optional_rows(grad_opacity, "grad_opacity", n, 1);
  auto d_xyz = torch::empty_like(xyz), d_scaling = torch::empty_like(scaling),
       d_rotation = torch::empty_like(rotation), d_opacity = torch::empty_like(opacity);
  if (n > 0) {
    pose_backward_kernel<<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        static_cast<int>(n), triangles.data_ptr<float>(), binding.data_ptr<int64_t>(),
        scaling.data_ptr<float>(), rotation.data_ptr<float>(), opacity.data_ptr<float>(),
        face_scale, mask, gx, gs, gr, go, d_xyz.data_ptr<float>(), d_scaling.data_ptr<float>(),
        d_rotation.data_ptr<float>(), d_opacity.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {d_xyz, d_scaling, d_rotation, d_opacity};
}

std::vector<torch::Tensor> regulariser_with_grad(const torch::Tensor& xyz,
                                                 const torch::Tensor& scaling,
                                                 const torch::Tensor& trainable, int64_t count,
                                                 double lambda_xyz, double threshold_xyz,
                                                 double lambda_scale, double threshold_scale) {
  const int64_t n = xyz.size(0);
  stga_fused::check_rows(xyz, "xyz", n, 3);
  stga_fused::check_rows(scaling, "scaling", n, 3);
  const bool* mask = stga_fused::optional_mask(trainable, n);
  auto row_loss = torch::empty({n}, xyz.options());
  auto d_xyz = torch::empty_like(xyz), d_scaling = torch::empty_like(scaling);
  if (n > 0) {
    regulariser_kernel<<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        static_cast<int>(n), xyz.data_ptr<float>(), scaling.data_ptr<float>(), mask,
        static_cast<float>(lambda_xyz), static_cast<float>(threshold_xyz),
        static_cast<float>(lambda_scale), static_cast<float>(threshold_scale),
        count > 0 ? 1.0f / static_cast<float>(count) : 0.0f, row_loss.data_ptr<float>(),
        d_xyz.data_ptr<float>(), d_scaling.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {row_loss.sum(), d_xyz, d_scaling};
}
