// Python binding of the RWKV-7 CUDA backward (bwd_cuda_kernel.cuh): checks, dtype and head-size
// dispatch, launch on the current stream.

#include <torch/extension.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "bwd_cuda_kernel.cuh"

namespace {

using namespace skein_rwkv7;

template <typename F, int N, int RS, int RR, int CS, int CC>
void launch(const std::vector<torch::Tensor>& x, const torch::Tensor& u, const torch::Tensor& states,
            const torch::Tensor& sT, const c10::optional<torch::Tensor>& dsT, std::vector<torch::Tensor>& g,
            const c10::optional<torch::Tensor>& ds0, double scale) {
  using L = Layout<N, RS, RR, CS, CC>;
  const int B = x[0].size(0), T = x[0].size(1), H = x[0].size(2);
  const size_t bytes = sizeof(float) * L::TOTAL;
  auto kernel = rwkv7_bwd_kernel<F, N, RS, RR, CS, CC>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
  auto in = [](const torch::Tensor& t) { return reinterpret_cast<const F*>(t.data_ptr()); };
  auto out = [](torch::Tensor& t) { return reinterpret_cast<F*>(t.data_ptr()); };
  kernel<<<B * H, L::THREADS, bytes, c10::cuda::getCurrentCUDAStream()>>>(
      in(x[0]), in(x[1]), in(x[2]), in(x[3]), in(x[4]), in(x[5]), in(x[6]), u.data_ptr<float>(),
      states.data_ptr<float>(), sT.data_ptr<float>(), dsT ? dsT->data_ptr<float>() : nullptr, out(g[0]),
      out(g[1]), out(g[2]), out(g[3]), out(g[4]), out(g[5]), ds0 ? ds0->data_ptr<float>() : nullptr, T, H,
      (float)scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// config: threads per state row RS, rows per row thread RR, threads per column CS, columns per
// column thread CC (bwd_cuda.py CONFIGS)
template <typename F>
void dispatch_config(int N, int config, const std::vector<torch::Tensor>& x, const torch::Tensor& u,
                     const torch::Tensor& states, const torch::Tensor& sT, const c10::optional<torch::Tensor>& dsT,
                     std::vector<torch::Tensor>& g, const c10::optional<torch::Tensor>& ds0, double scale) {
  if (N == 64 && config == 0) return launch<F, 64, 4, 2, 2, 2>(x, u, states, sT, dsT, g, ds0, scale);
  if (N == 64 && config == 1) return launch<F, 64, 4, 2, 4, 2>(x, u, states, sT, dsT, g, ds0, scale);
  if (N == 64 && config == 2) return launch<F, 64, 8, 2, 4, 2>(x, u, states, sT, dsT, g, ds0, scale);
  if (N == 64 && config == 3) return launch<F, 64, 4, 1, 2, 1>(x, u, states, sT, dsT, g, ds0, scale);
  if (N == 32 && config == 0) return launch<F, 32, 4, 2, 2, 2>(x, u, states, sT, dsT, g, ds0, scale);
  TORCH_CHECK(false, "rwkv7 CUDA backward: no kernel for head size ", N, " and config ", config);
}

}  // namespace

// x: r, w, k, v, a, b, do ([B, L, H, N], one dtype (bf16 or fp32), contiguous); u [B, L, H, N] fp32; states
// [B * H, ceil(L / 16), N, N] fp32; sT and dsT [B, H, N, N] fp32. Returns dr, dw, dk, dv, da, db in
// x's dtype and, if want_ds0, the initial state's gradient (else an empty tensor).
std::vector<torch::Tensor> rwkv7_bwd(std::vector<torch::Tensor> x, torch::Tensor u, torch::Tensor states,
                                     torch::Tensor sT, c10::optional<torch::Tensor> dsT, double scale,
                                     bool want_ds0, int64_t config) {
  TORCH_CHECK(x.size() == 7, "rwkv7 CUDA backward: expected r, w, k, v, a, b, do");
  const c10::cuda::CUDAGuard guard(x[0].device());
  const int N = x[0].size(3);
  for (auto& t : x) {
    TORCH_CHECK(t.is_cuda() && t.is_contiguous() && t.scalar_type() == x[0].scalar_type() && t.sizes() == x[0].sizes(),
                "rwkv7 CUDA backward: inputs must be contiguous CUDA tensors of one dtype and shape");
  }
  for (auto* t : {&u, &states, &sT}) {
    TORCH_CHECK(t->is_cuda() && t->is_contiguous() && t->scalar_type() == torch::kFloat32,
                "rwkv7 CUDA backward: u, states and sT must be contiguous fp32 CUDA tensors");
  }
  std::vector<torch::Tensor> g;
  for (int m = 0; m < 6; m++) g.push_back(torch::empty_like(x[m]));
  c10::optional<torch::Tensor> ds0;
  if (want_ds0) ds0 = torch::empty_like(sT);
  switch (x[0].scalar_type()) {
    case torch::kBFloat16: dispatch_config<__nv_bfloat16>(N, config, x, u, states, sT, dsT, g, ds0, scale); break;
    case torch::kFloat32: dispatch_config<float>(N, config, x, u, states, sT, dsT, g, ds0, scale); break;
    default: TORCH_CHECK(false, "rwkv7 CUDA backward: unsupported dtype ", x[0].scalar_type());
  }
  g.push_back(want_ds0 ? *ds0 : torch::empty({0}, sT.options()));
  return g;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("rwkv7_bwd", &rwkv7_bwd, "RWKV-7 WKV backward (CUDA)"); }
