// PyTorch side of the STGA CUDA rasterizer: argument checks, buffer allocation, the autograd
// function and the Python binding. The kernels are in kernels.cu. Written from scratch for STGA.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <vector>

#include "kernels.h"

// Host clock stamps inside a call, for bench/host_stamps.py only: compiled in with
// -DSTGA_HOST_TRACE (that script's own build), nothing otherwise. steady_clock is the clock of
// Python's time.perf_counter_ns on Linux, so the script can put the stamps on its own timeline.
#ifdef STGA_HOST_TRACE
#include <chrono>
#include <utility>
namespace stga::trace {
std::mutex mutex;  // the backward runs on autograd's device thread
std::vector<std::pair<const char*, int64_t>> stamps;
inline void stamp(const char* name) {
  const int64_t ns = std::chrono::steady_clock::now().time_since_epoch().count();
  const std::lock_guard<std::mutex> lock(mutex);
  stamps.emplace_back(name, ns);
}
}  // namespace stga::trace
#define STGA_STAMP(name) ::stga::trace::stamp(name)
#else
#define STGA_STAMP(name) ((void)0)
#endif

namespace stga {

#define STGA_CUDA_CHECK(expr)                                                            \
  do {                                                                                   \
    cudaError_t err__ = (expr);                                                          \
    TORCH_CHECK(err__ == cudaSuccess, "STGA rasterizer: ", #expr, " failed: ",          \
                cudaGetErrorString(err__));                                              \
  } while (0)

// Everything but rasterize() (the one binding) is internal.
namespace {

inline int cdiv(int64_t a, int64_t b) { return (int)((a + b - 1) / b); }

// The tensor as contiguous float32 on `dev`; the common case (already so) costs no dispatch.
at::Tensor as_f32(const at::Tensor& t, const at::Device& dev) {
  if (t.scalar_type() == at::kFloat && t.device() == dev && t.is_contiguous()) return t;
  return t.to(dev, at::kFloat).contiguous();
}

// Whether an optional tensor argument was given (None arrives as nullopt or as undefined).
bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

const float* opt_ptr(const std::optional<at::Tensor>& t) {
  return present(t) ? t->data_ptr<float>() : nullptr;
}

std::optional<at::Tensor> opt_f32(const std::optional<at::Tensor>& t, const at::Device& dev) {
  if (!present(t)) return std::nullopt;
  return as_f32(*t, dev);
}

// The checks on means3D that every entry point makes.
void check_means(const at::Tensor& means3D) {
  TORCH_CHECK(means3D.is_cuda(), "means3D must be a CUDA tensor");
  TORCH_CHECK(means3D.dim() == 2 && means3D.size(1) == 3, "means3D must be (N,3)");
}

// Whether the measurement switch `name` (environment) is set to 1.
bool switched(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && v[0] == '1';
}

// A fixed number of list positions per backward segment from STGA_RASTER_SEG (a positive
// multiple of 32, for measurements and tests), or 0 when it is not set.
int fixed_segment_length() {
  const char* v = std::getenv("STGA_RASTER_SEG");
  if (v == nullptr || v[0] == '\0') return 0;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  TORCH_CHECK(*end == '\0' && n >= 32 && n % 32 == 0 && n <= (1L << 20),
              "STGA_RASTER_SEG must be a positive multiple of 32 (got '", v, "')");
  return (int)n;
}

// The current device's index, checked against the per-device tables below.
constexpr int kMaxDevices = 64;
int device_index() {
  const int dev = c10::cuda::current_device();
  TORCH_CHECK(dev >= 0 && dev < kMaxDevices, "STGA rasterizer: device index out of range");
  return dev;
}

// What the launches need to know of the current device, queried once per device.
struct DeviceInfo {
  int sm_count;
  int major;  // compute capability
};
const DeviceInfo& device_info() {
  static DeviceInfo info[kMaxDevices];
  static std::once_flag once[kMaxDevices];
  const int dev = device_index();
  std::call_once(once[dev], [dev] {
    STGA_CUDA_CHECK(cudaDeviceGetAttribute(&info[dev].sm_count, cudaDevAttrMultiProcessorCount,
                                           dev));
    STGA_CUDA_CHECK(cudaDeviceGetAttribute(&info[dev].major, cudaDevAttrComputeCapabilityMajor,
                                           dev));
  });
  return info[dev];
}

// The image constants of the camera (size, tile grid, culling) and the device's multiprocessor
// count; the rest zero (seg: the caller's). Called under the device guard of the call.
Cam image_cam(int64_t W, int64_t H) {
  TORCH_CHECK(W > 0 && H > 0, "image size must be positive");
  Cam c{};
  c.sm_count = device_info().sm_count;
  c.W = (int)W;
  c.H = (int)H;
  c.grid_x = cdiv(W, kTile);
  c.grid_y = cdiv(H, kTile);
  // Internal tile-list culling (results are identical either way); off only for measurements.
  c.cull = switched("STGA_RASTER_NO_CULL") ? 0 : 1;
  return c;
}

// The call of forward or backward_preprocess: its device guard (made first, so that all below is
// made on the device of means3D), the checked inputs as contiguous float32 there, the kernels'
// camera and inputs, and the current stream.
struct Prepared {
  const c10::cuda::CUDAGuard guard;
  Cam cam;
  GaussIn in;
  int N;
  at::Tensor means, opac, view, proj, campos, bg;
  std::optional<at::Tensor> shs, colors, scales, rots, cov3D;
  cudaStream_t stream;
  bool copied;  // some input had to be converted (a copy was queued on the stream)

  Prepared(const at::Tensor& means3D, const at::Tensor& opacities,
           const std::optional<at::Tensor>& shs_, const std::optional<at::Tensor>& colors_,
           const std::optional<at::Tensor>& scales_, const std::optional<at::Tensor>& rots_,
           const std::optional<at::Tensor>& cov3D_, const at::Tensor& viewmatrix,
           const at::Tensor& projmatrix, const at::Tensor& campos_, const at::Tensor& bg_,
           int64_t W, int64_t H, double tanfovx, double tanfovy, double scale_modifier,
           int64_t sh_degree)
      : guard(means3D.device()) {
    check_means(means3D);
    cam = image_cam(W, H);
    const at::Device dev = means3D.device();
    N = (int)means3D.size(0);
    means = as_f32(means3D, dev);
    opac = as_f32(opacities, dev);
    TORCH_CHECK(opac.numel() == N, "opacities must have N elements");
    view = as_f32(viewmatrix, dev);
    proj = as_f32(projmatrix, dev);
    campos = as_f32(campos_, dev);
    bg = as_f32(bg_, dev);
    TORCH_CHECK(view.numel() == 16 && proj.numel() == 16, "matrices must be 4x4");
    TORCH_CHECK(campos.numel() == 3 && bg.numel() == 3, "campos and bg must have 3 elements");
    shs = opt_f32(shs_, dev);
    colors = opt_f32(colors_, dev);
    scales = opt_f32(scales_, dev);
    rots = opt_f32(rots_, dev);
    cov3D = opt_f32(cov3D_, dev);
    TORCH_CHECK(shs.has_value() != colors.has_value(),
                "pass exactly one of shs and colors_precomp");
    TORCH_CHECK(cov3D.has_value() != (scales.has_value() && rots.has_value()),
                "pass either scales and rotations, or cov3D_precomp");
    int K = 0;
    if (shs) {
      TORCH_CHECK(sh_degree >= 0 && sh_degree <= 3, "sh_degree must be 0..3");
      TORCH_CHECK(shs->dim() == 3 && shs->size(0) == N && shs->size(2) == 3,
                  "shs must be (N,K,3)");
      K = (int)shs->size(1);
      TORCH_CHECK(K >= (sh_degree + 1) * (sh_degree + 1),
                  "shs has fewer than (sh_degree+1)^2 coefficients");
    } else {
      TORCH_CHECK(colors->numel() == 3 * (int64_t)N, "colors_precomp must be (N,3)");
    }
    if (cov3D) {
      TORCH_CHECK(cov3D->numel() == 6 * (int64_t)N, "cov3D_precomp must be (N,6)");
    } else {
      TORCH_CHECK(scales->numel() == 3 * (int64_t)N, "scales must be (N,3)");
      TORCH_CHECK(rots->numel() == 4 * (int64_t)N, "rotations must be (N,4)");
    }
    cam.view = view.data_ptr<float>();
    cam.proj = proj.data_ptr<float>();
    cam.campos = campos.data_ptr<float>();
    cam.bg = bg.data_ptr<float>();
    cam.focal_x = (float)(W / (2.0 * tanfovx));
    cam.focal_y = (float)(H / (2.0 * tanfovy));
    cam.lim_x = (float)(kFovClamp * tanfovx);
    cam.lim_y = (float)(kFovClamp * tanfovy);
    cam.scale_mod = (float)scale_modifier;
    cam.deg = shs ? (int)sh_degree : 0;
    cam.K = K;
    in.means = means.data_ptr<float>();
    in.opac = opac.data_ptr<float>();
    in.shs = opt_ptr(shs);
    in.colors = opt_ptr(colors);
    in.scales = cov3D ? nullptr : opt_ptr(scales);
    in.rots = cov3D ? nullptr : opt_ptr(rots);
    in.cov3D = opt_ptr(cov3D);
    stream = c10::cuda::getCurrentCUDAStream();
    auto same = [](const std::optional<at::Tensor>& a, const std::optional<at::Tensor>& b) {
      return present(a) == present(b) && (!present(a) || a->is_same(*b));
    };
    copied = !(means.is_same(means3D) && opac.is_same(opacities) && view.is_same(viewmatrix) &&
               proj.is_same(projmatrix) && campos.is_same(campos_) && bg.is_same(bg_) &&
               same(shs, shs_) && same(colors, colors_) && same(scales, scales_) &&
               same(rots, rots_) && same(cov3D, cov3D_));
  }
};

// The lists' statistics after the preprocessing: the forward's one host sync. The
// preprocessing's last block writes them straight into mapped, pinned host memory (no copy
// queued behind it), and the host waits for an event recorded after the preprocessing only, so
// that the work queued behind it (the list phase) runs meanwhile. One mailbox per host thread (the
// buffer and an event per device, made on first use and never freed).
class StatsMailbox {
 public:
  static StatsMailbox& of_this_thread() {
    static thread_local StatsMailbox box;
    return box;
  }
  // Hands `lists` the address to write to and marks the mailbox empty (go -1, which the
  // preprocessing always overwrites); call before the launch.
  void expect(TileLists& lists) {
    if (host_ == nullptr) {
      STGA_CUDA_CHECK(cudaHostAlloc((void**)&host_, sizeof(ListStats),
                                    cudaHostAllocMapped | cudaHostAllocPortable));
      STGA_CUDA_CHECK(cudaHostGetDevicePointer((void**)&device_, host_, 0));
    }
    host_->go = -1;
    lists.host_stats = device_;
  }
  // Records the point to wait for: after the preprocessing, before anything queued behind it.
  void mark(cudaStream_t stream) {
    cudaEvent_t& ev = events_[device_index()];
    if (ev == nullptr) STGA_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    STGA_CUDA_CHECK(cudaEventRecord(ev, stream));
  }
  ListStats wait() {
    STGA_CUDA_CHECK(cudaEventSynchronize(events_[device_index()]));
    const ListStats st = *host_;  // written by the GPU; read after the (opaque) sync call
    TORCH_CHECK(st.go >= 0, "STGA rasterizer: the preprocessing did not report its lists");
    return st;
  }

 private:
  ListStats* host_ = nullptr;
  ListStats* device_ = nullptr;
  cudaEvent_t events_[kMaxDevices] = {};
};

// The backward blending's last report per device (kernels.h: SegReport), in mapped, pinned host
// memory that its kernel writes; made on first use and never freed.
class SegReports {
 public:
  static SegReports& instance() {
    static SegReports r;
    return r;
  }
  // The device address for the backward kernel of device `dev`.
  SegReport* device_slot(int dev) {
    init();
    return device_ + dev;
  }
  // A copy of device `dev`'s last report (all zeros before any). Read while a backward may be
  // writing it: a torn copy only makes one call's choice less apt.
  SegReport last(int dev) {
    init();
    const volatile SegReport& r = host_[dev];
    return SegReport{r.items, r.warps, r.seg, r.W, r.H};
  }

 private:
  void init() {
    std::call_once(once_, [this] {
      STGA_CUDA_CHECK(cudaHostAlloc((void**)&host_, sizeof(SegReport) * kMaxDevices,
                                    cudaHostAllocMapped | cudaHostAllocPortable));
      std::memset((void*)host_, 0, sizeof(SegReport) * kMaxDevices);
      STGA_CUDA_CHECK(cudaHostGetDevicePointer((void**)&device_, (void*)host_, 0));
    });
  }
  std::once_flag once_;
  volatile SegReport* host_ = nullptr;
  SegReport* device_ = nullptr;
};

// The backward's segment length for a call at W x H, among segment_choice(0..3) (kernels.h),
// from the last backward at the same image size (else kDefaultSeg): one step shorter when it
// had fewer than 2 items per persistent warp, one step longer when it had more than 6, else the
// same. Shorter segments make more, shorter items: at 100k Gaussians / 802x550, 1.5 items per
// warp with 384 positions left the SMs 40% idle behind the longest items, and with 192,
// render_bwd took 92 instead of 111 us; at 300k / 1604x1100, 5 per warp kept them 90% busy.
// Checkpoint memory grows as segments shorten, but only where items are few. (A step changes
// the items by at most 2x, so the choice settles instead of going back and forth.)
int choose_segment_length(int64_t W, int64_t H) {
  if (const int fixed = fixed_segment_length()) return fixed;
  const SegReport r = SegReports::instance().last(device_index());
  if (r.W != W || r.H != H || r.items <= 0 || r.warps <= 0) return kDefaultSeg;
  const int k = segment_choice_index(r.seg);
  if (k < 0) return kDefaultSeg;
  if (r.items < 2 * r.warps && k + 1 < kSegChoices) return segment_choice(k + 1);
  if (r.items > 6 * r.warps && k > 0) return segment_choice(k - 1);
  return r.seg;
}

// The list phase (emission, sort, merges, blending) is launched right behind the preprocessing,
// before the host knows the lists, with a plan sized from the previous call's lists on the device
// (kernels.h: ListPlan); the host then checks the plan against the lists and, if they do not
// fit, launches the phase again with the exact plan. No plan on a device's first call, after a
// call with another image size (whose lists say little, and whose room would be kept for the
// backward), for huge lists (where the extra room could exhaust memory that the exact size would
// not, and the host time saved is negligible), or with STGA_RASTER_NO_PLAN=1 (for measurements
// and tests).
class ListHint {
 public:
  static ListHint& of_device(int dev) {
    static ListHint hints[kMaxDevices];
    return hints[dev];
  }
  void remember(const ListStats& st, int64_t W, int64_t H, int seg) {
    const std::lock_guard<std::mutex> lock(mutex_);
    last_ = st;
    w_ = W;
    h_ = H;
    seg_ = seg;
    valid_ = true;
  }
  std::optional<ListPlan> plan(int64_t W, int64_t H, int num_tiles, bool split, int seg) {
    if (switched("STGA_RASTER_NO_PLAN")) return std::nullopt;
    ListStats h;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (!valid_ || w_ != W || h_ != H) return std::nullopt;
      h = last_;
      if (seg != seg_) {  // the checkpoints with another segment length, if it is a choice
        const int k = segment_choice_index(seg);
        if (k < 0) return std::nullopt;
        h.ckpt_slots = h.ckpt_slots_at[k];
      }
    }
    constexpr unsigned long long kMaxEntries = 1ull << 26;
    if (h.entries == 0 || h.entries > kMaxEntries) return std::nullopt;
    // Counts get room to grow (a kernel block or an entry of room costs little; the point list
    // and the checkpoints are kept for the backward, hence only 1/16); the merge passes do not
    // (a pass too many costs a pass over the long lists), nor do the grids' rows and slots (any
    // number works).
    auto more = [](long long v) { return v + v / 16 + 8; };
    ListPlan p = exact_plan(h, split);
    p.keys_room = (unsigned long long)more((long long)h.entries) + 1024;
    p.merge_room = p.passes >= 2 ? (unsigned long long)more(h.long_entries) + 1024 : 0;
    p.sort_tiles = (int)std::min<long long>(more(h.nonempty), num_tiles);
    p.sort_slots = std::min(p.sort_slots, INT_MAX / std::max(p.sort_tiles, 1));
    p.merge_tiles = (int)std::min<long long>(more(h.num_long), num_tiles);
    if (split) p.ckpt_slots = (int)more(h.ckpt_slots);
    return p;
  }

 private:
  std::mutex mutex_;
  ListStats last_{};
  int64_t w_ = 0, h_ = 0;
  int seg_ = 0;
  bool valid_ = false;
};

// Which plan the calling thread's last forward used: 0 none (the phase after the sync), 1 the
// guessed one, 2 the guessed one did not fit (the phase ran again). Read by tests.
thread_local int last_plan_outcome = 0;
// The segment length of the calling thread's last forward (tests).
thread_local int last_segment_length = 0;

// The forward's per-Gaussian and per-tile state that the backward reads, in one int32
// allocation: Geom (N x kGeomFloats floats), then TileLists (tile_lists_ints(T) words) at a
// 16-byte boundary.
size_t geom_words(int N) { return ((size_t)N * kGeomFloats + 3) / 4 * 4; }
size_t state_ints(int N, int T) { return geom_words(N) + tile_lists_ints(T); }
Geom state_geom(int* base, int N) { return geom_at(reinterpret_cast<float*>(base), N); }
TileLists state_lists(int* base, int N, int T) { return tile_lists_at(base + geom_words(N), T); }

// The blending's per-pixel state that the backward reads, in one int32 allocation: the split's
// checkpoints (BwdSplit; ckpt_slots >= 0 when the split is on, and then at least one slot, since
// a non-null ckpt is what tells the kernels that the split is on), the final transmittance and
// the last contributor (H x W each), and the split's work list.
struct PixelState {
  float* final_T;
  int* last;
  BwdSplit split;
};
size_t ckpt_ints(int ckpt_slots) {
  return ckpt_slots < 0 ? 0 : (size_t)std::max(ckpt_slots, 1) * kBlockPixels * 4;
}
size_t pixel_state_ints(int64_t HW, int T, int ckpt_slots) {
  return ckpt_ints(ckpt_slots) + 2 * (size_t)HW +
         (ckpt_slots < 0 ? 0 : 2 * work_capacity(T, ckpt_slots));
}
PixelState pixel_state_at(int* base, int64_t HW, int T, int ckpt_slots, const TileLists& lists) {
  PixelState ps;
  const size_t c = ckpt_ints(ckpt_slots);
  ps.final_T = reinterpret_cast<float*>(base + c);
  ps.last = base + c + HW;
  ps.split = BwdSplit{nullptr, nullptr, 0, lists.work_counters, lists.ckpt_base};
  if (ckpt_slots >= 0) {
    ps.split.ckpt = reinterpret_cast<float4*>(base);
    ps.split.work = reinterpret_cast<int2*>(base + c + 2 * HW);  // 8-byte aligned: c, 2HW even
    ps.split.capacity = work_capacity(T, ckpt_slots);
  }
  return ps;
}

// What the forward hands to the autograd function: the outputs, the state the backward reads,
// and the split's checkpoint slots (-1: no split).
struct ForwardOut {
  at::Tensor color, radii, state, point_list, pixels;
  int ckpt_slots;
};

ForwardOut forward(const at::Tensor& means3D, const at::Tensor& opacities,
                   const std::optional<at::Tensor>& shs, const std::optional<at::Tensor>& colors,
                   const std::optional<at::Tensor>& scales, const std::optional<at::Tensor>& rots,
                   const std::optional<at::Tensor>& cov3D, const at::Tensor& viewmatrix,
                   const at::Tensor& projmatrix, const at::Tensor& campos, const at::Tensor& bg,
                   int64_t W, int64_t H, double tanfovx, double tanfovy, double scale_modifier,
                   int64_t sh_degree, bool need_backward, int seg) {
  STGA_STAMP("fwd.forward");
  const Prepared p(means3D, opacities, shs, colors, scales, rots, cov3D, viewmatrix, projmatrix,
                   campos, bg, W, H, tanfovx, tanfovy, scale_modifier, sh_degree);
  STGA_STAMP("fwd.prepared");
  const int N = p.N;
  Cam cam = p.cam;
  cam.seg = seg;
  const auto fopt = p.means.options();
  const auto iopt = fopt.dtype(at::kInt);
  const int num_tiles = cam.grid_x * cam.grid_y;

  ForwardOut out;
  out.radii = at::empty({N}, iopt);
  out.state = at::empty({(int64_t)state_ints(N, num_tiles)}, iopt);
  const Geom geom = state_geom(out.state.data_ptr<int>(), N);
  TileLists lists = state_lists(out.state.data_ptr<int>(), N, num_tiles);
  STGA_CUDA_CHECK(cudaMemsetAsync(reinterpret_cast<int*>(lists.ranges), 0,
                                  tile_lists_zeroed_ints(num_tiles) * sizeof(int), p.stream));
  STGA_STAMP("fwd.allocated");
  // The backward's split along the lists (off only for measurements; results agree to float
  // rounding either way).
  const bool split = need_backward && !switched("STGA_RASTER_NO_SPLIT");
  // Longest lists first (the layout writes the order; none without Gaussians); index order only
  // for measurements.
  const int* order = (N > 0 && !switched("STGA_RASTER_NO_ORDER")) ? lists.order : nullptr;
  at::Tensor scratch;  // the preprocessing's, read by the emission
  Scratch s{};
  // The list phase with `plan` (`guessed`: before the lists are known): keys, point_list, image
  // and per-pixel state, and its kernels.
  auto list_phase = [&](const ListPlan& plan, bool guessed) {
    at::Tensor keys =
        at::empty({(int64_t)(plan.keys_room + plan.merge_room)}, fopt.dtype(at::kLong));
    auto* kp = reinterpret_cast<unsigned long long*>(keys.data_ptr<int64_t>());
    out.point_list = at::empty({(int64_t)plan.keys_room}, iopt);
    STGA_CUDA_CHECK(launch_emit(N, cam, geom, s, lists, plan, guessed, kp, p.stream));
    STGA_CUDA_CHECK(launch_sort_lists(lists, plan, guessed, kp, kp + plan.keys_room,
                                      out.point_list.data_ptr<int>(), p.stream));
    keys.reset();  // before the image and the per-pixel state: lower forward peak memory
    if (!out.color.defined()) out.color = at::empty({3, H, W}, fopt);
    out.ckpt_slots = plan.ckpt_slots;
    out.pixels = at::empty({(int64_t)pixel_state_ints(H * W, num_tiles, out.ckpt_slots)}, iopt);
    const PixelState ps =
        pixel_state_at(out.pixels.data_ptr<int>(), H * W, num_tiles, out.ckpt_slots, lists);
    STGA_CUDA_CHECK(launch_render_forward(cam, lists, guessed, order,
                                          out.point_list.data_ptr<int>(), geom,
                                          out.color.data_ptr<float>(), ps.final_T, ps.last,
                                          ps.split, p.stream));
  };
  ListStats st{};
  if (N > 0) {
    scratch = at::empty({(int64_t)N * kScratchWords}, iopt);
    s = scratch_at(scratch.data_ptr<int>(), N);
    ListHint& hint = ListHint::of_device(device_index());
    const std::optional<ListPlan> guess = hint.plan(W, H, num_tiles, split, seg);
    StatsMailbox& mailbox = StatsMailbox::of_this_thread();
    mailbox.expect(lists);
    STGA_CUDA_CHECK(launch_preprocess(N, cam, p.in, geom, s, out.radii.data_ptr<int>(), lists,
                                      guess ? &*guess : nullptr, p.stream));
    mailbox.mark(p.stream);
    if (guess) list_phase(*guess, true);
    STGA_STAMP("fwd.launched");
    // The one host sync: the lists' statistics.
    st = mailbox.wait();
    STGA_STAMP("fwd.synced");
    TORCH_CHECK(st.entries <= (unsigned long long)std::numeric_limits<int>::max(),
                "STGA rasterizer: the Gaussians cover more than 2^31 (tile, Gaussian) pairs; "
                "render fewer or smaller Gaussians, or a smaller image");
    hint.remember(st, W, H, seg);
    last_plan_outcome = !guess ? 0 : st.go == 1 ? 1 : 2;  // the preprocessing's verdict
    if (last_plan_outcome != 1) list_phase(exact_plan(st, split && st.entries > 0), false);
  } else {
    list_phase(exact_plan(st, false), false);  // the background only
    last_plan_outcome = 0;
  }
  out.point_list = out.point_list.narrow(0, 0, (int64_t)st.entries);
  STGA_STAMP("fwd.rendered");
  return out;
}

// Backward, part 1: the blending pass, accumulating per-Gaussian screen-space gradients. Split
// from part 2 so that the caller can free the forward's buffers before the gradients are
// allocated (lower peak memory).
at::Tensor backward_render(const at::Tensor& grad_color, const at::Tensor& means3D,
                           const at::Tensor& bg, int64_t W, int64_t H, int64_t seg,
                           const at::Tensor& state, const at::Tensor& point_list,
                           const at::Tensor& pixels, int ckpt_slots) {
  const c10::cuda::CUDAGuard guard(means3D.device());
  check_means(means3D);
  const int N = (int)means3D.size(0);
  const at::Device dev = means3D.device();
  const at::Tensor bgf = as_f32(bg, dev);
  TORCH_CHECK(bgf.numel() == 3, "bg must have 3 elements");
  Cam cam = image_cam(W, H);
  cam.bg = bgf.data_ptr<float>();
  cam.seg = (int)seg;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor dcolor = as_f32(grad_color, dev);
  TORCH_CHECK(dcolor.numel() == 3 * H * W, "grad of color must be (3,H,W)");
  const int R = (int)point_list.numel();
  const int num_tiles = cam.grid_x * cam.grid_y;
  TORCH_CHECK(state.numel() == (int64_t)state_ints(N, num_tiles) &&
                  pixels.numel() == (int64_t)pixel_state_ints(H * W, num_tiles, ckpt_slots),
              "STGA rasterizer: the forward's state does not match the backward's call");
  const TileLists tl = state_lists(state.data_ptr<int>(), N, num_tiles);
  PixelState ps = pixel_state_at(pixels.data_ptr<int>(), H * W, num_tiles, ckpt_slots, tl);
  if (ps.split.work != nullptr)  // the next forward's segment length comes from this report
    ps.split.report = SegReports::instance().device_slot(device_index());
  at::Tensor acc = at::empty({(int64_t)N * kGradSlots}, means3D.options().dtype(at::kFloat));
  STGA_CUDA_CHECK(launch_backward_render(N, cam, (const int*)tl.ranges,
                                         point_list.data_ptr<int>(), R,
                                         state_geom(state.data_ptr<int>(), N), ps.final_T,
                                         ps.last, dcolor.data_ptr<float>(), ps.split,
                                         acc.data_ptr<float>(), stream));
  return acc;
}

// Backward, part 2: the chain rule per Gaussian from the accumulated gradients to the inputs.
// Called right after backward_render; `after_blending`: it launched the blending kernel (there
// were list entries), which is then the stream's previous kernel unless `p` converted inputs.
std::vector<at::Tensor> backward_preprocess(const at::Tensor& acc, const Prepared& p,
                                            const at::Tensor& radii, bool after_blending) {
  const int N = p.N;
  const Cam& cam = p.cam;
  const auto fopt = p.means.options();
  TORCH_CHECK(acc.numel() == (int64_t)N * kGradSlots, "accumulator size mismatch");

  // Every gradient is a view of one allocation (one allocator call instead of up to seven), each
  // starting at a 128-byte boundary (the kernel's vector stores). Order: means, means2D,
  // opacities, shs, colors, scales, rotations, cov3D; the last five only for given inputs.
  const int64_t n = N;
  const bool given[] = {true, true, true, p.shs.has_value(), p.colors.has_value(),
                        !p.cov3D, !p.cov3D, p.cov3D.has_value()};
  const std::vector<int64_t> shapes[] = {{n, 3}, {n, 3}, {n, 1}, {n, cam.K, 3},
                                         {n, 3}, {n, 3}, {n, 4}, {n, 6}};
  constexpr int kGrads = sizeof(given) / sizeof(given[0]);
  int64_t offset[kGrads + 1] = {0};
  for (int k = 0; k < kGrads; ++k) {
    const int64_t numel = given[k] ? c10::multiply_integers(shapes[k]) : 0;
    offset[k + 1] = offset[k] + (numel + 31) / 32 * 32;
  }
  const at::Tensor all = at::empty({offset[kGrads]}, fopt);
  std::vector<at::Tensor> grads(kGrads);
  float* ptr[kGrads] = {};
  // Plain views, made below autograd (gradients carry no history): no view bookkeeping.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  for (int k = 0; k < kGrads; ++k) {
    if (!given[k]) continue;
    const std::vector<int64_t>& shape = shapes[k];
    std::vector<int64_t> strides(shape.size(), 1);
    for (int d = (int)shape.size() - 2; d >= 0; --d) strides[d] = strides[d + 1] * shape[d + 1];
    grads[k] = all.as_strided(shape, strides, offset[k]);
    ptr[k] = all.data_ptr<float>() + offset[k];
  }
  GaussGrad g{};
  g.means = ptr[0];
  g.means2D = ptr[1];
  g.opac = ptr[2];
  g.shs = ptr[3];
  g.colors = ptr[4];
  g.scales = ptr[5];
  g.rots = ptr[6];
  g.cov3D = ptr[7];
  // Overlapped with the end of the blending pass (sm_90 and later; off only for measurements),
  // unless a conversion kernel came between them.
  const bool overlap = after_blending && !p.copied && device_info().major >= 9 &&
                       !switched("STGA_RASTER_NO_OVERLAP");
  STGA_CUDA_CHECK(launch_backward_preprocess(N, cam, p.in, radii.data_ptr<int>(),
                                             acc.data_ptr<float>(), g, overlap, p.stream));
  return grads;
}

// The autograd function, in C++ so that neither the forward nor the backward goes through Python:
// autograd's engine calls backward() directly, without the interpreter on the critical path.
at::Tensor cast_to(const at::Tensor& g, at::ScalarType t) {
  return (!g.defined() || g.scalar_type() == t) ? g : g.to(t);
}

at::Tensor opt_or_undef(const std::optional<at::Tensor>& t) {
  return present(t) ? *t : at::Tensor();
}

std::optional<at::Tensor> undef_to_opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// Buffers of the forward that the backward consumes, in backward_render's argument order.
const char* const kStateKeys[] = {"state", "point_list", "pixels"};

class RasterizeFunction : public torch::autograd::Function<RasterizeFunction> {
 public:
  static constexpr int kArgs = 19;  // forward's arguments after ctx

  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, const at::Tensor& means3D, const at::Tensor& means2D,
      const at::Tensor& opacities, const std::optional<at::Tensor>& shs,
      const std::optional<at::Tensor>& colors, const std::optional<at::Tensor>& scales,
      const std::optional<at::Tensor>& rots, const std::optional<at::Tensor>& cov3D,
      const at::Tensor& viewmatrix, const at::Tensor& projmatrix, const at::Tensor& campos,
      const at::Tensor& bg, int64_t W, int64_t H, double tanfovx, double tanfovy,
      double scale_modifier, int64_t sh_degree, bool need_backward) {
    const int seg = choose_segment_length(W, H);
    last_segment_length = seg;
    ForwardOut out =
        stga::forward(means3D, opacities, shs, colors, scales, rots, cov3D, viewmatrix,
                      projmatrix, campos, bg, W, H, tanfovx, tanfovy, scale_modifier, sh_degree,
                      need_backward, seg);
    const at::Tensor& radii = out.radii;
    ctx->save_for_backward({means3D, opacities, opt_or_undef(shs), opt_or_undef(colors),
                            opt_or_undef(scales), opt_or_undef(rots), opt_or_undef(cov3D), radii,
                            viewmatrix, projmatrix, campos, bg});
    auto& d = ctx->saved_data;
    d["W"] = W;
    d["H"] = H;
    d["tanfovx"] = tanfovx;
    d["tanfovy"] = tanfovy;
    d["scale_modifier"] = scale_modifier;
    d["sh_degree"] = sh_degree;
    d["seg"] = (int64_t)seg;
    d["ckpt_slots"] = (int64_t)out.ckpt_slots;
    d["means2D_dtype"] = (int64_t)means2D.scalar_type();
    // Held outside save_for_backward so that backward can drop them before it allocates the
    // gradients (lower peak memory).
    d[kStateKeys[0]] = std::move(out.state);
    d[kStateKeys[1]] = std::move(out.point_list);
    d[kStateKeys[2]] = std::move(out.pixels);
    ctx->mark_non_differentiable({radii});
    // radii never has a gradient: no zero tensor is materialised for it on every backward.
    ctx->set_materialize_grads(false);
    STGA_STAMP("fwd.return");
    return {cast_to(out.color, means3D.scalar_type()), radii};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    STGA_STAMP("bwd.entry");
    torch::autograd::variable_list result(kArgs);
    const at::Tensor& grad_color = grads[0];
    if (!grad_color.defined()) return result;  // nothing depended on the image
    auto& d = ctx->saved_data;
    TORCH_CHECK(d.count(kStateKeys[0]) != 0,
                "the CUDA rasterizer supports one backward pass per forward (its buffers are "
                "released); render again");
    const torch::autograd::variable_list v = ctx->get_saved_variables();
    const at::Tensor &means3D = v[0], &opacities = v[1], &radii = v[7];
    const at::Tensor &view = v[8], &proj = v[9], &campos = v[10], &bg = v[11];
    const int64_t W = d["W"].toInt(), H = d["H"].toInt(), deg = d["sh_degree"].toInt();
    const double tx = d["tanfovx"].toDouble(), ty = d["tanfovy"].toDouble();
    const double sm = d["scale_modifier"].toDouble();
    const auto m2d_dtype = (at::ScalarType)d["means2D_dtype"].toInt();
    at::Tensor acc;
    bool blended = false;
    {
      std::vector<at::Tensor> st;
      for (const char* k : kStateKeys) {
        st.push_back(d[k].toTensor());
        d.erase(k);
      }
      acc = backward_render(grad_color, means3D, bg, W, H, d["seg"].toInt(), st[0], st[1], st[2],
                            (int)d["ckpt_slots"].toInt());
      blended = st[1].numel() > 0;  // point_list: there were entries to blend
      STGA_STAMP("bwd.blending");
    }  // the forward's buffers are released here, before the gradients exist
    std::vector<at::Tensor> g;
    {
      const Prepared p(means3D, opacities, undef_to_opt(v[2]), undef_to_opt(v[3]),
                       undef_to_opt(v[4]), undef_to_opt(v[5]), undef_to_opt(v[6]), view, proj,
                       campos, bg, W, H, tx, ty, sm, deg);
      STGA_STAMP("bwd.prepared");
      g = backward_preprocess(acc, p, radii, blended);
      STGA_STAMP("bwd.per_gaussian");
    }
    acc.reset();
    result[0] = cast_to(g[0], means3D.scalar_type());
    result[1] = cast_to(g[1], m2d_dtype);
    result[2] = cast_to(g[2], opacities.scalar_type());
    for (int k = 0; k < 5; ++k)  // shs, colors, scales, rotations, cov3D
      if (v[2 + k].defined()) result[3 + k] = cast_to(g[3 + k], v[2 + k].scalar_type());
    STGA_STAMP("bwd.return");
    return result;
  }
};

}  // namespace

// Render (color, radii) through the C++ autograd function.
std::vector<at::Tensor> rasterize(const at::Tensor& means3D, const at::Tensor& means2D,
                                  const at::Tensor& opacities,
                                  const std::optional<at::Tensor>& shs,
                                  const std::optional<at::Tensor>& colors,
                                  const std::optional<at::Tensor>& scales,
                                  const std::optional<at::Tensor>& rots,
                                  const std::optional<at::Tensor>& cov3D,
                                  const at::Tensor& viewmatrix, const at::Tensor& projmatrix,
                                  const at::Tensor& campos, const at::Tensor& bg, int64_t W,
                                  int64_t H, double tanfovx, double tanfovy,
                                  double scale_modifier, int64_t sh_degree) {
  STGA_STAMP("fwd.entry");
  const bool has_cov = present(cov3D);
  const std::optional<at::Tensor> sc = has_cov ? std::nullopt : scales;
  const std::optional<at::Tensor> ro = has_cov ? std::nullopt : rots;
  auto grad = [](const std::optional<at::Tensor>& t) {
    return present(t) && t->requires_grad();
  };
  // The forward keeps the backward's work split only when a backward can follow.
  const bool need_backward =
      at::GradMode::is_enabled() &&
      (means3D.requires_grad() || means2D.requires_grad() || opacities.requires_grad() ||
       grad(shs) || grad(colors) || grad(sc) || grad(ro) || grad(cov3D));
  torch::autograd::variable_list out = RasterizeFunction::apply(
      means3D, means2D, opacities, shs, colors, sc, ro, cov3D, viewmatrix, projmatrix, campos, bg,
      W, H, tanfovx, tanfovy, scale_modifier, sh_degree, need_backward);
  STGA_STAMP("fwd.applied");
  return {out[0], out[1]};
}

}  // namespace stga

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "STGA differentiable Gaussian rasterizer (CUDA)";
  m.def("rasterize", &stga::rasterize,
        "rasterize(means3D, means2D, opacities, shs, colors, scales, rotations, cov3D, "
        "viewmatrix, projmatrix, campos, bg, W, H, tanfovx, tanfovy, scale_modifier, sh_degree) "
        "-> [color, radii], differentiable (C++ autograd function)");
  m.def("_last_segment_length", [] { return stga::last_segment_length; },
        "for tests: the backward segment length that the calling thread's last forward chose");
  m.def("_last_plan_outcome", [] { return stga::last_plan_outcome; },
        "for tests: how the calling thread's last forward launched its list phase (0: after the "
        "sync, 1: before it, with a guessed plan, 2: the guess did not fit and it ran again)");
#ifdef STGA_HOST_TRACE
  m.def("_host_stamps", [] {
    const std::lock_guard<std::mutex> lock(stga::trace::mutex);
    std::vector<std::pair<std::string, int64_t>> out(stga::trace::stamps.begin(),
                                                     stga::trace::stamps.end());
    stga::trace::stamps.clear();
    return out;
  }, "[(name, steady_clock ns)] of the stamps since the last call, and forget them");
#endif
}
