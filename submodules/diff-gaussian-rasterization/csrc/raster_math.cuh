// Per-Gaussian and per-pixel mathematics of the STGA rasterizer (see the package README for the
// exact function). Everything here is plain float32 arithmetic in __host__ __device__ functions,
// so the CUDA kernels and a host-side check can share it. Written from scratch for STGA.
#pragma once

#include <stdint.h>

#include <cmath>
#include <cstring>

#if defined(__CUDACC__)
#define STGA_HD __host__ __device__ __forceinline__
#define STGA_UNROLL _Pragma("unroll")
#else
#define STGA_HD inline
#define STGA_UNROLL
#endif

namespace stga {

constexpr int kTile = 16;                 // tiles are kTile x kTile pixels
constexpr float kNearZ = 0.2f;            // culled when view z <= kNearZ
constexpr float kAlphaMin = 1.0f / 255.0f;
constexpr float kAlphaMax = 0.99f;
constexpr float kTMin = 1e-4f;            // stop once T (1 - alpha) would fall below this
constexpr float kLowPass = 0.3f;          // added to the diagonal of the 2D covariance
constexpr float kFovClamp = 1.3f;         // view-ray clamp for the Jacobian, in tan(fov/2) units
constexpr int kGradSlots = 9;             // per-Gaussian screen-space gradient accumulators

// Slots of the per-Gaussian accumulator filled by the backward blending pass.
enum GradSlot : int {
  kSlotR = 0, kSlotG = 1, kSlotB = 2,   // dL/d rgb
  kSlotOpacity = 3,                     // dL/d opacity
  kSlotPx = 4, kSlotPy = 5,             // dL/d pixel position of the mean
  kSlotConicA = 6, kSlotConicB = 7, kSlotConicC = 8,  // dL/d conic (a, b, c)
};

constexpr float kSH_C0 = 0.28209479177387814f;
constexpr float kSH_C1 = 0.4886025119029199f;
constexpr float kSH_C2_0 = 1.0925484305920792f;
constexpr float kSH_C2_1 = -1.0925484305920792f;
constexpr float kSH_C2_2 = 0.31539156525252005f;
constexpr float kSH_C2_3 = -1.0925484305920792f;
constexpr float kSH_C2_4 = 0.5462742152960396f;
constexpr float kSH_C3_0 = -0.5900435899266435f;
constexpr float kSH_C3_1 = 2.890611442640554f;
constexpr float kSH_C3_2 = -0.4570457994644658f;
constexpr float kSH_C3_3 = 0.3731763325901154f;
constexpr float kSH_C3_4 = -0.4570457994644658f;
constexpr float kSH_C3_5 = 1.445305721320277f;
constexpr float kSH_C3_6 = -0.5900435899266435f;

// ---------------------------------------------------------------------------------------------
// Arithmetic with a fixed rounding: the forward and backward blending passes must make the same
// skip decisions, so the Gaussian's power is computed with explicit (non-contractible) operations.
STGA_HD float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
STGA_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
STGA_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
STGA_HD float fast_exp(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  return std::exp(x);
#endif
}
STGA_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
STGA_HD float minf(float a, float b) { return a < b ? a : b; }
STGA_HD float maxf(float a, float b) { return a > b ? a : b; }

// Camera and image constants of one call. The matrices live in device memory (4x4, row-vector
// layout of 3DGS: view = [x y z 1] @ viewmatrix).
struct Cam {
  const float* view;
  const float* proj;
  const float* campos;
  const float* bg;
  int W, H;
  int grid_x, grid_y;
  float focal_x, focal_y;   // W / (2 tanfovx), H / (2 tanfovy)
  float lim_x, lim_y;       // kFovClamp * tanfov
  float scale_mod;
  int deg;                  // SH degree in use
  int K;                    // SH coefficients stored per Gaussian (>= (deg+1)^2)
  int cull;                 // 1: leave tiles where alpha < 1/255 everywhere out of the lists
  int seg;                  // list positions per backward segment (kernels.h, BwdSplit)
  int sm_count;             // multiprocessors of the device (persistent grids)
};

// The Gaussians' inputs, float32 and contiguous; unused ones are null.
struct GaussIn {
  const float* means;    // (N,3)
  const float* opac;     // (N)
  const float* shs;      // (N,K,3) or null
  const float* colors;   // (N,3) or null
  const float* scales;   // (N,3) or null
  const float* rots;     // (N,4) or null
  const float* cov3D;    // (N,6) or null
};

// Gradients of the Gaussians' inputs; unused ones are null.
struct GaussGrad {
  float* means;     // (N,3)
  float* means2D;   // (N,3): d/d ndc.xy, 0
  float* opac;      // (N)
  float* shs;       // (N,K,3)
  float* colors;    // (N,3)
  float* scales;    // (N,3)
  float* rots;      // (N,4)
  float* cov3D;     // (N,6)
};

// ---------------------------------------------------------------------------------------------
STGA_HD void view_point(const float* V, const float m[3], float t[3]) {
STGA_UNROLL
  for (int j = 0; j < 3; ++j) t[j] = m[0] * V[j] + m[1] * V[4 + j] + m[2] * V[8 + j] + V[12 + j];
}

STGA_HD void clip_point(const float* P, const float m[3], float c[4]) {
STGA_UNROLL
  for (int j = 0; j < 4; ++j) c[j] = m[0] * P[j] + m[1] * P[4 + j] + m[2] * P[8 + j] + P[12 + j];
}

// Rotation matrix (row-major) of a unit quaternion (w, x, y, z).
STGA_HD void quat_to_rot(float w, float x, float y, float z, float R[9]) {
  R[0] = 1.f - 2.f * (y * y + z * z);
  R[1] = 2.f * (x * y - w * z);
  R[2] = 2.f * (x * z + w * y);
  R[3] = 2.f * (x * y + w * z);
  R[4] = 1.f - 2.f * (x * x + z * z);
  R[5] = 2.f * (y * z - w * x);
  R[6] = 2.f * (x * z - w * y);
  R[7] = 2.f * (y * z + w * x);
  R[8] = 1.f - 2.f * (x * x + y * y);
}

// Sigma = R diag(s)^2 R^T as its upper triangle (xx, xy, xz, yy, yz, zz).
STGA_HD void cov3d_from_sr(const float s[3], const float R[9], float cov[6]) {
  const float a = s[0] * s[0], b = s[1] * s[1], c = s[2] * s[2];
  cov[0] = R[0] * R[0] * a + R[1] * R[1] * b + R[2] * R[2] * c;
  cov[1] = R[0] * R[3] * a + R[1] * R[4] * b + R[2] * R[5] * c;
  cov[2] = R[0] * R[6] * a + R[1] * R[7] * b + R[2] * R[8] * c;
  cov[3] = R[3] * R[3] * a + R[4] * R[4] * b + R[5] * R[5] * c;
  cov[4] = R[3] * R[6] * a + R[4] * R[7] * b + R[5] * R[8] * c;
  cov[5] = R[6] * R[6] * a + R[7] * R[7] * b + R[8] * R[8] * c;
}

// S v for the symmetric matrix given by its upper triangle.
STGA_HD void sym_mul(const float S[6], const float v[3], float out[3]) {
  out[0] = S[0] * v[0] + S[1] * v[1] + S[2] * v[2];
  out[1] = S[1] * v[0] + S[3] * v[1] + S[4] * v[2];
  out[2] = S[2] * v[0] + S[4] * v[1] + S[5] * v[2];
}

// The 2x3 matrix T = J Wr of the EWA projection, and what its backward needs.
struct Jac {
  float T0[3], T1[3];     // rows of T
  float iz;               // 1 / t.z
  float txc, tyc;         // clamped view x, y
  bool clx, cly;          // whether x / y were clamped
};

STGA_HD void make_jac(const Cam& cam, const float t[3], Jac& J) {
  const float* V = cam.view;
  J.iz = 1.f / t[2];
  const float rx = t[0] * J.iz, ry = t[1] * J.iz;
  J.clx = rx < -cam.lim_x || rx > cam.lim_x;
  J.cly = ry < -cam.lim_y || ry > cam.lim_y;
  J.txc = minf(cam.lim_x, maxf(-cam.lim_x, rx)) * t[2];
  J.tyc = minf(cam.lim_y, maxf(-cam.lim_y, ry)) * t[2];
  const float j00 = cam.focal_x * J.iz;
  const float j02 = -cam.focal_x * J.txc * J.iz * J.iz;
  const float j11 = cam.focal_y * J.iz;
  const float j12 = -cam.focal_y * J.tyc * J.iz * J.iz;
  // Wr[k][i] = V[4 i + k] (view = Wr m + translation)
STGA_UNROLL
  for (int i = 0; i < 3; ++i) {
    J.T0[i] = j00 * V[4 * i + 0] + j02 * V[4 * i + 2];
    J.T1[i] = j11 * V[4 * i + 1] + j12 * V[4 * i + 2];
  }
}

// ---------------------------------------------------------------------------------------------
// Real SH basis of 3DGS up to degree 3 at the unit direction (x, y, z).
STGA_HD void sh_basis(int deg, float x, float y, float z, float b[16]) {
  b[0] = kSH_C0;
  if (deg < 1) return;
  b[1] = -kSH_C1 * y;
  b[2] = kSH_C1 * z;
  b[3] = -kSH_C1 * x;
  if (deg < 2) return;
  const float xx = x * x, yy = y * y, zz = z * z;
  b[4] = kSH_C2_0 * x * y;
  b[5] = kSH_C2_1 * y * z;
  b[6] = kSH_C2_2 * (2.f * zz - xx - yy);
  b[7] = kSH_C2_3 * x * z;
  b[8] = kSH_C2_4 * (xx - yy);
  if (deg < 3) return;
  b[9] = kSH_C3_0 * y * (3.f * xx - yy);
  b[10] = kSH_C3_1 * x * y * z;
  b[11] = kSH_C3_2 * y * (4.f * zz - xx - yy);
  b[12] = kSH_C3_3 * z * (2.f * zz - 3.f * xx - 3.f * yy);
  b[13] = kSH_C3_4 * x * (4.f * zz - xx - yy);
  b[14] = kSH_C3_5 * z * (xx - yy);
  b[15] = kSH_C3_6 * x * (xx - 3.f * yy);
}

// Accumulates sum_j g[j] d b_j / d(x, y, z) into (gx, gy, gz).
STGA_HD void sh_basis_backward(int deg, float x, float y, float z, const float g[16], float& gx,
                               float& gy, float& gz) {
  gx = 0.f; gy = 0.f; gz = 0.f;
  if (deg < 1) return;
  gy += -kSH_C1 * g[1];
  gz += kSH_C1 * g[2];
  gx += -kSH_C1 * g[3];
  if (deg < 2) return;
  const float xx = x * x, yy = y * y, zz = z * z;
  gx += kSH_C2_0 * y * g[4];
  gy += kSH_C2_0 * x * g[4];
  gy += kSH_C2_1 * z * g[5];
  gz += kSH_C2_1 * y * g[5];
  gx += -2.f * kSH_C2_2 * x * g[6];
  gy += -2.f * kSH_C2_2 * y * g[6];
  gz += 4.f * kSH_C2_2 * z * g[6];
  gx += kSH_C2_3 * z * g[7];
  gz += kSH_C2_3 * x * g[7];
  gx += 2.f * kSH_C2_4 * x * g[8];
  gy += -2.f * kSH_C2_4 * y * g[8];
  if (deg < 3) return;
  gx += kSH_C3_0 * 6.f * x * y * g[9];
  gy += kSH_C3_0 * (3.f * xx - 3.f * yy) * g[9];
  gx += kSH_C3_1 * y * z * g[10];
  gy += kSH_C3_1 * x * z * g[10];
  gz += kSH_C3_1 * x * y * g[10];
  gx += -2.f * kSH_C3_2 * x * y * g[11];
  gy += kSH_C3_2 * (4.f * zz - xx - 3.f * yy) * g[11];
  gz += 8.f * kSH_C3_2 * y * z * g[11];
  gx += -6.f * kSH_C3_3 * x * z * g[12];
  gy += -6.f * kSH_C3_3 * y * z * g[12];
  gz += kSH_C3_3 * (6.f * zz - 3.f * xx - 3.f * yy) * g[12];
  gx += kSH_C3_4 * (4.f * zz - 3.f * xx - yy) * g[13];
  gy += -2.f * kSH_C3_4 * x * y * g[13];
  gz += 8.f * kSH_C3_4 * x * z * g[13];
  gx += 2.f * kSH_C3_5 * x * z * g[14];
  gy += -2.f * kSH_C3_5 * y * z * g[14];
  gz += kSH_C3_5 * (xx - yy) * g[14];
  gx += kSH_C3_6 * (3.f * xx - 3.f * yy) * g[15];
  gy += -6.f * kSH_C3_6 * x * y * g[15];
}

// ---------------------------------------------------------------------------------------------
// Tile rectangle [x0, x1) x [y0, y1) of a Gaussian at pixel position (px, py) with radius r.
// Computed with explicit rounding so that every kernel gets the same rectangle.
STGA_HD void tile_rect(float px, float py, float r, int gx, int gy, int& x0, int& y0, int& x1,
                       int& y1) {
  const float s = 1.f / kTile;
#if defined(__CUDA_ARCH__)
  const float fx0 = floorf(mul_rn(sub_rn(px, r), s)), fx1 = ceilf(mul_rn(px + r, s));
  const float fy0 = floorf(mul_rn(sub_rn(py, r), s)), fy1 = ceilf(mul_rn(py + r, s));
#else
  const float fx0 = std::floor((px - r) * s), fx1 = std::ceil((px + r) * s);
  const float fy0 = std::floor((py - r) * s), fy1 = std::ceil((py + r) * s);
#endif
  // maxf(NaN, 0) is 0 here (the comparison is false), so a NaN position touches no tile.
  x0 = (int)minf(maxf(fx0, 0.f), (float)gx);
  x1 = (int)minf(maxf(fx1, 0.f), (float)gx);
  y0 = (int)minf(maxf(fy0, 0.f), (float)gy);
  y1 = (int)minf(maxf(fy1, 0.f), (float)gy);
}

// Power of a Gaussian with conic (A, B, C) at offset (dx, dy) = pixel centre - mean.
STGA_HD float gauss_power(float A, float B, float C, float dx, float dy) {
  const float u = mul_rn(-0.5f * A, dx);
  const float v = mul_rn(-0.5f * C, dy);
  const float w = mul_rn(mul_rn(-B, dx), dy);
  return fma_rn(u, dx, fma_rn(v, dy, w));
}

// Alpha of a Gaussian (conic A, B, C, opacity o) at offset (dx, dy), or 0 when the definition
// skips it (power > 0 or alpha < 1/255). `G` gets exp(power) and `raw` o * G. Used by both
// blending passes so that they make identical decisions.
STGA_HD float blend_alpha(float A, float B, float C, float o, float dx, float dy, float& G,
                          float& raw) {
  const float power = gauss_power(A, B, C, dx, dy);
  G = fast_exp(power);
  raw = o * G;
  const float alpha = minf(kAlphaMax, raw);
  return (power <= 0.f && alpha >= kAlphaMin) ? alpha : 0.f;
}

// ---------------------------------------------------------------------------------------------
// Internal tile lists. The definition lists a Gaussian for every tile of its rectangle, but a tile
// in which it cannot reach alpha >= 1/255 at any pixel centre changes nothing (the Gaussian is
// skipped there), so such tiles are left out. The test is conservative (safety margins) and its
// arithmetic has fixed rounding, so the counting and the emitting kernels agree exactly.

// k such that alpha >= 1/255 only where d^T conic d <= k; negative if never.
STGA_HD float cull_level(float opacity) {
  if (!(opacity >= kAlphaMin)) return -1.f;   // alpha <= opacity: always skipped
  const float t = maxf(255.f * opacity, 1.f);
#if defined(__CUDA_ARCH__)
  const float tau = logf(t);
#else
  const float tau = std::log(t);
#endif
  return 2.f * tau * 1.002f + 2e-3f;
}

// Conic well enough conditioned for the float tests below (else: no culling).
STGA_HD bool cull_ok(float A, float B, float C, float& det) {
  det = sub_rn(mul_rn(A, C), mul_rn(B, B));
  if (!(A > 0.f && C > 0.f && det > 0.f)) return false;
  const float cond = add_rn(mul_rn(A, C), mul_rn(B, B));
  return cond <= 1e3f * det;
}

// Half extents (hx, hy) of the bounding box of the ellipse d^T conic d <= k, with margins;
// false when the conic is too ill-conditioned for the float tests (then nothing is culled).
STGA_HD bool cull_extents(float A, float B, float C, float k, float& hx, float& hy) {
  float det;
  if (!cull_ok(A, B, C, det)) return false;
  // sqrt(k Sigma_xx), sqrt(k Sigma_yy) with Sigma = conic^-1
  hx = add_rn(mul_rn(sqrtf(mul_rn(k, C) / det), 1.001f), 0.01f);
  hy = add_rn(mul_rn(sqrtf(mul_rn(k, A) / det), 1.001f), 0.01f);
  return true;
}

// Cuts the tile rectangle [x0,x1)x[y0,y1) to the bounding box of the ellipse d^T conic d <= k
// around (px, py), taken over pixel centres.
STGA_HD void cull_rect(float px, float py, float A, float B, float C, float k, int& x0, int& y0,
                       int& x1, int& y1) {
  if (k < 0.f) { x1 = x0; y1 = y0; return; }
  float hx, hy;
  if (!cull_extents(A, B, C, k, hx, hy)) return;
  // tile t holds pixel centres 16t + 0.5 ... 16t + 15.5
  const float s = 1.f / kTile;
  const float fx0 = ceilf(mul_rn(sub_rn(sub_rn(px, hx), 15.5f), s));
  const float fx1 = floorf(mul_rn(sub_rn(add_rn(px, hx), 0.5f), s)) + 1.f;
  const float fy0 = ceilf(mul_rn(sub_rn(sub_rn(py, hy), 15.5f), s));
  const float fy1 = floorf(mul_rn(sub_rn(add_rn(py, hy), 0.5f), s)) + 1.f;
  x0 = (int)maxf((float)x0, minf(fx0, (float)x1));
  x1 = (int)minf((float)x1, maxf(fx1, (float)x0));
  y0 = (int)maxf((float)y0, minf(fy0, (float)y1));
  y1 = (int)minf((float)y1, maxf(fy1, (float)y0));
  if (x1 < x0) x1 = x0;
  if (y1 < y0) y1 = y0;
}

// Rectangles with more tiles than this list all of them (no per-tile test).
constexpr int kMaxTestedTiles = 64;

// Per-Gaussian constants of the per-tile ellipse test.
struct CullGeo {
  float px, py, A, B, C, k, b_over_c, b_over_a;
  bool ok;
};

STGA_HD CullGeo make_cull_geo(float px, float py, float A, float B, float C, float k) {
  CullGeo g;
  float det;
  g.px = px; g.py = py; g.A = A; g.B = B; g.C = C; g.k = k;
  g.ok = cull_ok(A, B, C, det);
  g.b_over_c = g.ok ? B / C : 0.f;
  g.b_over_a = g.ok ? B / A : 0.f;
  return g;
}

// Whether the ellipse reaches a pixel centre of the w x h pixel box with top-left pixel (x0, y0)
// (always true when not testable). The box is taken as continuous, so the test is conservative.
STGA_HD bool box_hit(int x0, int y0, int w, int h, const CullGeo& g) {
  if (!g.ok) return true;
  const float bx0 = sub_rn((float)x0 + 0.5f, g.px), bx1 = add_rn(bx0, (float)(w - 1));
  const float by0 = sub_rn((float)y0 + 0.5f, g.py), by1 = add_rn(by0, (float)(h - 1));
  if (bx0 <= 0.f && bx1 >= 0.f && by0 <= 0.f && by1 >= 0.f) return true;
  // The minimum of the quadratic over the box lies on its boundary: minimise on each edge.
  float best = 3.0e38f;
  const float X[2] = {bx0, bx1}, Y[2] = {by0, by1};
  STGA_UNROLL
  for (int e = 0; e < 2; ++e) {
    const float x = X[e];
    const float y = minf(maxf(-mul_rn(g.b_over_c, x), by0), by1);
    const float q = fma_rn(mul_rn(g.A, x), x,
                           fma_rn(mul_rn(2.f * g.B, x), y, mul_rn(mul_rn(g.C, y), y)));
    best = minf(best, q);
  }
  STGA_UNROLL
  for (int e = 0; e < 2; ++e) {
    const float y = Y[e];
    const float x = minf(maxf(-mul_rn(g.b_over_a, y), bx0), bx1);
    const float q = fma_rn(mul_rn(g.A, x), x,
                           fma_rn(mul_rn(2.f * g.B, x), y, mul_rn(mul_rn(g.C, y), y)));
    best = minf(best, q);
  }
  return best <= g.k;
}

// Whether the ellipse reaches a pixel centre of tile (tx, ty).
STGA_HD bool tile_hit(int tx, int ty, const CullGeo& g) {
  return box_hit(tx * kTile, ty * kTile, kTile, kTile, g);
}

// Whether the per-tile ellipse test applies to a rectangle of n tiles (otherwise every tile of the
// rectangle lists the Gaussian). The preprocessing and the emission must decide identically.
STGA_HD bool tests_tiles(int cull, int n) { return cull && n > 1 && n <= kMaxTestedTiles; }

// ---------------------------------------------------------------------------------------------
// Loading and storing a Gaussian's SH coefficients (float4 when VEC: K a multiple of 4, so every
// Gaussian's block is 16-byte aligned and the rounding up to whole float4s stays inside it).
template <int NF, bool VEC>
STGA_HD void load_floats(const float* p, float (&out)[NF]) {
#if defined(__CUDA_ARCH__)
  if (VEC) {
    STGA_UNROLL
    for (int q = 0; q < (NF + 3) / 4; ++q) {
      const float4 v = reinterpret_cast<const float4*>(p)[q];
      if (4 * q + 0 < NF) out[4 * q + 0] = v.x;
      if (4 * q + 1 < NF) out[4 * q + 1] = v.y;
      if (4 * q + 2 < NF) out[4 * q + 2] = v.z;
      if (4 * q + 3 < NF) out[4 * q + 3] = v.w;
    }
  } else
#endif
  {
    STGA_UNROLL
    for (int q = 0; q < NF; ++q) out[q] = p[q];
  }
}

// Writes v[0..NF) then zeros up to `total` floats.
template <int NF, bool VEC>
STGA_HD void store_floats(float* p, const float (&v)[NF], int total) {
#if defined(__CUDA_ARCH__)
  if (VEC) {
    constexpr int NQ = (NF + 3) / 4;
    STGA_UNROLL
    for (int q = 0; q < NQ; ++q) {
      float4 w;
      w.x = 4 * q + 0 < NF ? v[4 * q + 0] : 0.f;
      w.y = 4 * q + 1 < NF ? v[4 * q + 1] : 0.f;
      w.z = 4 * q + 2 < NF ? v[4 * q + 2] : 0.f;
      w.w = 4 * q + 3 < NF ? v[4 * q + 3] : 0.f;
      reinterpret_cast<float4*>(p)[q] = w;
    }
    for (int q = NQ; q < total / 4; ++q) reinterpret_cast<float4*>(p)[q] = make_float4(0.f, 0.f, 0.f, 0.f);
  } else
#endif
  {
    STGA_UNROLL
    for (int q = 0; q < NF; ++q) p[q] = v[q];
    for (int q = NF; q < total; ++q) p[q] = 0.f;
  }
}

// ---------------------------------------------------------------------------------------------
// Per-Gaussian forward: screen position, conic, opacity, colour, depth, radius, tile rectangle.
struct PreOut {
  float* xy;         // (N,2) pixel position of the mean (px, py)
  float* conic_o;    // (N,4) conic a, b, c and opacity
  float* rgb;        // (N,4) colour, and the culling level k (cull_level) in w
  uint32_t* depth_key;  // (N) float bits of the view depth (set when the rectangle is not empty)
  uint16_t* rect;    // (N,4) x0, y0, x1, y1 of the cut tile rectangle (empty: not listed)
  int* radii;        // (N)
};

// The tiles that may list a Gaussian: its cut tile rectangle and the per-tile test's constants.
struct Listing {
  int x0, y0, x1, y1;
  CullGeo geo;
  STGA_HD int area() const { return (x1 - x0) * (y1 - y0); }
};

STGA_HD void load_cov3d(const Cam& cam, const GaussIn& in, int i, float cov[6], float R[9],
                        float s[3], float qn[4], float& qnorm) {
  if (in.cov3D) {
STGA_UNROLL
    for (int k = 0; k < 6; ++k) cov[k] = in.cov3D[6 * i + k];
    return;
  }
  const float* q = in.rots + 4 * i;
  const float qw = q[0], qx = q[1], qy = q[2], qz = q[3];
  qnorm = sqrtf(qw * qw + qx * qx + qy * qy + qz * qz);
  const float inv = 1.f / qnorm;
  qn[0] = qw * inv; qn[1] = qx * inv; qn[2] = qy * inv; qn[3] = qz * inv;
  quat_to_rot(qn[0], qn[1], qn[2], qn[3], R);
STGA_UNROLL
  for (int k = 0; k < 3; ++k) s[k] = cam.scale_mod * in.scales[3 * i + k];
  cov3d_from_sr(s, R, cov);
}

// The EWA projection of the 3D covariance cov seen at the view point t (shared by the forward and
// the backward preprocessing).
struct Cov2D {
  Jac J;                 // T = J Wr
  float S0[3], S1[3];    // cov T0, cov T1
  float a, b, c;         // 2D covariance [[a, b], [b, c]], low-pass term included
};

STGA_HD void ewa_cov2d(const Cam& cam, const float t[3], const float cov[6], Cov2D& p) {
  make_jac(cam, t, p.J);
  sym_mul(cov, p.J.T0, p.S0);
  sym_mul(cov, p.J.T1, p.S1);
  const float* T0 = p.J.T0;
  const float* T1 = p.J.T1;
  p.a = T0[0] * p.S0[0] + T0[1] * p.S0[1] + T0[2] * p.S0[2] + kLowPass;
  p.b = T0[0] * p.S1[0] + T0[1] * p.S1[1] + T0[2] * p.S1[2];
  p.c = T1[0] * p.S1[0] + T1[1] * p.S1[1] + T1[2] * p.S1[2] + kLowPass;
}

// SH colour before the clamp (0.5 added), from the coefficients sh[3 NB].
template <int D>
STGA_HD void sh_color(const float* sh, float x, float y, float z, float rgb[3], float bs[16]) {
  constexpr int NB = (D + 1) * (D + 1);
  sh_basis(D, x, y, z, bs);
  rgb[0] = rgb[1] = rgb[2] = 0.5f;
STGA_UNROLL
  for (int j = 0; j < NB; ++j) {
    rgb[0] += bs[j] * sh[3 * j];
    rgb[1] += bs[j] * sh[3 * j + 1];
    rgb[2] += bs[j] * sh[3 * j + 2];
  }
}

// True, with L filled, when some tile may list the Gaussian (its geometry, colour and depth key
// are then written); the caller stores the rectangle.
template <int D, bool VEC>
STGA_HD bool preprocess_forward_one(int i, const Cam& cam, const GaussIn& in, const PreOut& out,
                                    Listing& L) {
  out.radii[i] = 0;
  const float m[3] = {in.means[3 * i], in.means[3 * i + 1], in.means[3 * i + 2]};
  float t[3];
  view_point(cam.view, m, t);
  if (!(t[2] > kNearZ)) return false;
  float c4[4];
  clip_point(cam.proj, m, c4);
  const float iw = 1.f / c4[3];
  const float px = (c4[0] * iw + 1.f) * (0.5f * cam.W);
  const float py = (c4[1] * iw + 1.f) * (0.5f * cam.H);

  float cov[6], R[9], s[3], qn[4], qnorm;
  load_cov3d(cam, in, i, cov, R, s, qn, qnorm);
  Cov2D ewa;
  ewa_cov2d(cam, t, cov, ewa);
  const float a = ewa.a, b = ewa.b, c = ewa.c;
  const float det = a * c - b * b;
  if (!(det > 0.f)) return false;
  const float idet = 1.f / det;
  const float mid = 0.5f * (a + c);
  const float lam = mid + sqrtf(maxf(0.1f, mid * mid - det));
  const float radius = ceilf(3.f * sqrtf(lam));
  int x0, y0, x1, y1;
  tile_rect(px, py, radius, cam.grid_x, cam.grid_y, x0, y0, x1, y1);
  if ((x1 - x0) * (y1 - y0) <= 0) return false;
  out.radii[i] = (int)radius;   // the definition's radius; the lists below may be shorter

  const float A = c * idet, B = -b * idet, C = a * idet, o = in.opac[i];
  float k = 0.f;
  if (cam.cull) {
    k = cull_level(o);
    cull_rect(px, py, A, B, C, k, x0, y0, x1, y1);
  }
  if ((x1 - x0) * (y1 - y0) <= 0) return false;

  float rgb[3];
  if (in.colors) {
STGA_UNROLL
    for (int q = 0; q < 3; ++q) rgb[q] = in.colors[3 * i + q];
  } else {
    float d[3] = {m[0] - cam.campos[0], m[1] - cam.campos[1], m[2] - cam.campos[2]};
    const float il = 1.f / sqrtf(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
    d[0] *= il; d[1] *= il; d[2] *= il;
    float sh[3 * (D + 1) * (D + 1)], bs[16];
    load_floats<3 * (D + 1) * (D + 1), VEC>(in.shs + (size_t)i * cam.K * 3, sh);
    sh_color<D>(sh, d[0], d[1], d[2], rgb, bs);
STGA_UNROLL
    for (int q = 0; q < 3; ++q) rgb[q] = maxf(rgb[q], 0.f);
  }

  out.xy[2 * i] = px;
  out.xy[2 * i + 1] = py;
  out.conic_o[4 * i] = A;
  out.conic_o[4 * i + 1] = B;
  out.conic_o[4 * i + 2] = C;
  out.conic_o[4 * i + 3] = o;
  out.rgb[4 * i] = rgb[0];
  out.rgb[4 * i + 1] = rgb[1];
  out.rgb[4 * i + 2] = rgb[2];
  out.rgb[4 * i + 3] = k;
#if defined(__CUDA_ARCH__)
  out.depth_key[i] = __float_as_uint(t[2]);
#else
  uint32_t bits;
  std::memcpy(&bits, &t[2], 4);
  out.depth_key[i] = bits;
#endif
  L.x0 = x0; L.y0 = y0; L.x1 = x1; L.y1 = y1;
  L.geo = make_cull_geo(px, py, A, B, C, k);
  return true;
}

// ---------------------------------------------------------------------------------------------
// Per-Gaussian backward: from the accumulated screen-space gradients (kGradSlots per Gaussian)
// to the gradients of every input. Culled Gaussians (radius 0) get zeros. wait_for_acc() is
// called before acc is read and before anything is stored: what comes before it reads only the
// inputs (on the GPU it overlaps the end of the blending pass, kernels.cu). The Gaussian's SH
// coefficients are read from sh_row and their gradient (cam.K * 3 floats) written to gsh_row:
// its rows of in.shs and g.shs, or copies that the caller moves in and out (kernels.cu); the two
// may be the same memory (every read of sh_row comes before the write).
template <int D, bool VEC, class Wait>
STGA_HD void preprocess_backward_one(int i, const Cam& cam, const GaussIn& in, const int* radii,
                                     const float* acc, const float* sh_row, float* gsh_row,
                                     const GaussGrad& g, Wait&& wait_for_acc) {
  constexpr int NB = (D + 1) * (D + 1);
  if (radii[i] == 0) {
    wait_for_acc();
STGA_UNROLL
    for (int k = 0; k < 3; ++k) { g.means[3 * i + k] = 0.f; g.means2D[3 * i + k] = 0.f; }
    g.opac[i] = 0.f;
    if (g.colors) for (int k = 0; k < 3; ++k) g.colors[3 * i + k] = 0.f;
    if (g.shs) {
      const float none[1] = {0.f};
      store_floats<1, VEC>(gsh_row, none, cam.K * 3);
    }
    if (g.cov3D) for (int k = 0; k < 6; ++k) g.cov3D[6 * i + k] = 0.f;
    if (g.scales) for (int k = 0; k < 3; ++k) g.scales[3 * i + k] = 0.f;
    if (g.rots) for (int k = 0; k < 4; ++k) g.rots[4 * i + k] = 0.f;
    return;
  }
  // The forward's quantities, from the inputs alone.
  const float m[3] = {in.means[3 * i], in.means[3 * i + 1], in.means[3 * i + 2]};
  float c4[4];
  clip_point(cam.proj, m, c4);
  const float iw = 1.f / c4[3];
  const float nx = c4[0] * iw, ny = c4[1] * iw;
  float t[3];
  view_point(cam.view, m, t);
  float cov[6], R[9], s[3], qn[4], qnorm = 1.f;
  load_cov3d(cam, in, i, cov, R, s, qn, qnorm);
  Cov2D ewa;
  ewa_cov2d(cam, t, cov, ewa);
  const float a = ewa.a, b = ewa.b, c = ewa.c;
  const float idet = 1.f / (a * c - b * b);
  const float A = c * idet, B = -b * idet, C = a * idet;
  // view direction, SH basis and which colour channels the forward clamped at 0
  float dir[3] = {m[0] - cam.campos[0], m[1] - cam.campos[1], m[2] - cam.campos[2]};
  float il = 1.f, bs[16];
  bool clamped[3] = {false, false, false};
  if (!g.colors) {
    il = 1.f / sqrtf(dir[0] * dir[0] + dir[1] * dir[1] + dir[2] * dir[2]);
    dir[0] *= il; dir[1] *= il; dir[2] *= il;
    float sh[3 * NB], rgb[3];
    load_floats<3 * NB, VEC>(sh_row, sh);
    sh_color<D>(sh, dir[0], dir[1], dir[2], rgb, bs);
STGA_UNROLL
    for (int k = 0; k < 3; ++k) clamped[k] = rgb[k] < 0.f;
  }

  wait_for_acc();
  const float* a9 = acc + (size_t)kGradSlots * i;
  const float g_rgb[3] = {a9[kSlotR], a9[kSlotG], a9[kSlotB]};
  const float g_px = a9[kSlotPx], g_py = a9[kSlotPy];
  const float gA = a9[kSlotConicA], gB = a9[kSlotConicB], gC = a9[kSlotConicC];
  g.opac[i] = a9[kSlotOpacity];
  float dm[3] = {0.f, 0.f, 0.f};

  // Screen position: px = (ndc.x + 1) W / 2.
  const float g_ndcx = g_px * (0.5f * cam.W), g_ndcy = g_py * (0.5f * cam.H);
  g.means2D[3 * i] = g_ndcx;
  g.means2D[3 * i + 1] = g_ndcy;
  g.means2D[3 * i + 2] = 0.f;
  {
    const float* P = cam.proj;
STGA_UNROLL
    for (int k = 0; k < 3; ++k)
      dm[k] += (g_ndcx * (P[4 * k] - nx * P[4 * k + 3]) + g_ndcy * (P[4 * k + 1] - ny * P[4 * k + 3])) * iw;
  }

  // Conic -> 2D covariance.
  // dL/dSigma' = -M G M with M the conic and G = [[gA, gB/2], [gB/2, gC]].
  const float ga = -(A * A * gA + A * B * gB + B * B * gC);
  const float gb = -(2.f * A * B * gA + (A * C + B * B) * gB + 2.f * B * C * gC);
  const float gc = -(B * B * gA + B * C * gB + C * C * gC);

  // 2D covariance -> T (= J Wr) and the 3D covariance.
  float dT0[3], dT1[3];
STGA_UNROLL
  for (int k = 0; k < 3; ++k) {
    dT0[k] = 2.f * ga * ewa.S0[k] + gb * ewa.S1[k];
    dT1[k] = gb * ewa.S0[k] + 2.f * gc * ewa.S1[k];
  }
  const float* T0 = ewa.J.T0;
  const float* T1 = ewa.J.T1;
  float dcov[6];
  dcov[0] = ga * T0[0] * T0[0] + gb * T0[0] * T1[0] + gc * T1[0] * T1[0];
  dcov[3] = ga * T0[1] * T0[1] + gb * T0[1] * T1[1] + gc * T1[1] * T1[1];
  dcov[5] = ga * T0[2] * T0[2] + gb * T0[2] * T1[2] + gc * T1[2] * T1[2];
  dcov[1] = 2.f * ga * T0[0] * T0[1] + gb * (T0[0] * T1[1] + T0[1] * T1[0]) + 2.f * gc * T1[0] * T1[1];
  dcov[2] = 2.f * ga * T0[0] * T0[2] + gb * (T0[0] * T1[2] + T0[2] * T1[0]) + 2.f * gc * T1[0] * T1[2];
  dcov[4] = 2.f * ga * T0[1] * T0[2] + gb * (T0[1] * T1[2] + T0[2] * T1[1]) + 2.f * gc * T1[1] * T1[2];

  // T -> J -> view-space position.
  {
    const float* V = cam.view;
    float dJ00 = 0.f, dJ02 = 0.f, dJ11 = 0.f, dJ12 = 0.f;
STGA_UNROLL
    for (int k = 0; k < 3; ++k) {
      dJ00 += dT0[k] * V[4 * k + 0];
      dJ02 += dT0[k] * V[4 * k + 2];
      dJ11 += dT1[k] * V[4 * k + 1];
      dJ12 += dT1[k] * V[4 * k + 2];
    }
    const float iz = ewa.J.iz, iz2 = iz * iz, iz3 = iz2 * iz;
    const float fx = cam.focal_x, fy = cam.focal_y;
    const float dtx = ewa.J.clx ? 0.f : -fx * iz2 * dJ02;
    const float dty = ewa.J.cly ? 0.f : -fy * iz2 * dJ12;
    const float dtz = -fx * iz2 * dJ00 - fy * iz2 * dJ11 + 2.f * fx * ewa.J.txc * iz3 * dJ02 +
                      2.f * fy * ewa.J.tyc * iz3 * dJ12;
STGA_UNROLL
    for (int k = 0; k < 3; ++k) dm[k] += V[4 * k] * dtx + V[4 * k + 1] * dty + V[4 * k + 2] * dtz;
  }

  // 3D covariance -> cov3D_precomp, or scales and rotations.
  if (g.cov3D) {
STGA_UNROLL
    for (int k = 0; k < 6; ++k) g.cov3D[6 * i + k] = dcov[k];
  } else {
    // Symmetric gradient matrix Gs (off-diagonals are half the parameter gradients).
    const float G[9] = {dcov[0], 0.5f * dcov[1], 0.5f * dcov[2],
                        0.5f * dcov[1], dcov[3], 0.5f * dcov[4],
                        0.5f * dcov[2], 0.5f * dcov[4], dcov[5]};
    // GR = Gs R
    float GR[9];
STGA_UNROLL
    for (int r = 0; r < 3; ++r)
STGA_UNROLL
      for (int k = 0; k < 3; ++k)
        GR[3 * r + k] = G[3 * r] * R[k] + G[3 * r + 1] * R[3 + k] + G[3 * r + 2] * R[6 + k];
    // dL/ds_k = 2 s_k (R^T Gs R)_kk ; dL/dR = 2 Gs R diag(s^2)
STGA_UNROLL
    for (int k = 0; k < 3; ++k) {
      const float rgr = R[k] * GR[k] + R[3 + k] * GR[3 + k] + R[6 + k] * GR[6 + k];
      g.scales[3 * i + k] = 2.f * s[k] * rgr * cam.scale_mod;
    }
    float dR[9];
STGA_UNROLL
    for (int r = 0; r < 3; ++r)
STGA_UNROLL
      for (int k = 0; k < 3; ++k) dR[3 * r + k] = 2.f * GR[3 * r + k] * s[k] * s[k];
    const float w = qn[0], x = qn[1], y = qn[2], z = qn[3];
    float dq[4];
    dq[0] = 2.f * (-z * dR[1] + y * dR[2] + z * dR[3] - x * dR[5] - y * dR[6] + x * dR[7]);
    dq[1] = 2.f * (y * dR[1] + z * dR[2] + y * dR[3] - 2.f * x * dR[4] - w * dR[5] + z * dR[6] +
                   w * dR[7] - 2.f * x * dR[8]);
    dq[2] = 2.f * (-2.f * y * dR[0] + x * dR[1] + w * dR[2] + x * dR[3] + z * dR[5] - w * dR[6] +
                   z * dR[7] - 2.f * y * dR[8]);
    dq[3] = 2.f * (-2.f * z * dR[0] - w * dR[1] + x * dR[2] + w * dR[3] - 2.f * z * dR[4] +
                   y * dR[5] + x * dR[6] + y * dR[7]);
    // Through q / |q|.
    const float proj = w * dq[0] + x * dq[1] + y * dq[2] + z * dq[3];
    const float iq = 1.f / qnorm;
STGA_UNROLL
    for (int k = 0; k < 4; ++k) g.rots[4 * i + k] = (dq[k] - qn[k] * proj) * iq;
  }

  // Colour.
  if (g.colors) {
STGA_UNROLL
    for (int k = 0; k < 3; ++k) g.colors[3 * i + k] = g_rgb[k];
  } else {
    const float* d = dir;
    float sh[3 * NB];
    load_floats<3 * NB, VEC>(sh_row, sh);
    float gk[3];
STGA_UNROLL
    for (int k = 0; k < 3; ++k) gk[k] = clamped[k] ? 0.f : g_rgb[k];
    float gsh[3 * NB], gbasis[16];
STGA_UNROLL
    for (int j = 0; j < NB; ++j) {
      gsh[3 * j] = bs[j] * gk[0];
      gsh[3 * j + 1] = bs[j] * gk[1];
      gsh[3 * j + 2] = bs[j] * gk[2];
      gbasis[j] = gk[0] * sh[3 * j] + gk[1] * sh[3 * j + 1] + gk[2] * sh[3 * j + 2];
    }
    store_floats<3 * NB, VEC>(gsh_row, gsh, cam.K * 3);
    float gd[3];
    sh_basis_backward(D, d[0], d[1], d[2], gbasis, gd[0], gd[1], gd[2]);
    const float dot = gd[0] * d[0] + gd[1] * d[1] + gd[2] * d[2];
STGA_UNROLL
    for (int k = 0; k < 3; ++k) dm[k] += (gd[k] - d[k] * dot) * il;
  }

STGA_UNROLL
  for (int k = 0; k < 3; ++k) g.means[3 * i + k] = dm[k];
}


}  // namespace stga
