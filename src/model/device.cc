#include "model/device.h"

#include <torch/cuda.h>

#include <c10/core/impl/VirtualGuardImpl.h>

#ifdef GRAFT_WITH_CUDA
#include <cuda_runtime.h>
#endif

#include "model/parameter_storage.h"
#include "util/error.h"

namespace graft {

c10::DeviceType chooseDeviceType(const std::string& setting, const std::string& what) {
  const bool cuda = torch::cuda::is_available();
  if (setting == "cpu") return c10::DeviceType::CPU;
  if (setting == "auto") return cuda ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
  if (setting == "cuda") {
    if (cuda) return c10::DeviceType::CUDA;
#ifdef GRAFT_WITH_CUDA
    throw InputError(what + " = cuda: no CUDA device is visible (check CUDA_VISIBLE_DEVICES and nvidia-smi), or use " +
                     what + " = cpu");
#else
    throw InputError(what + " = cuda: this graft was built for the CPU (without -DGRAFT_WITH_CUDA=ON against a CUDA "
                     "LibTorch: docs/building.md); use " + what + " = cpu or auto");
#endif
  }
  throw InputError(what + ": '" + setting + "' is not one of auto, cpu, cuda");
}

c10::Device deviceOfRank(c10::DeviceType type, int local_rank) {
  if (type != c10::DeviceType::CUDA) return c10::Device(type);
  const auto visible = static_cast<int>(torch::cuda::device_count());
  return c10::Device(type, static_cast<c10::DeviceIndex>(local_rank % std::max(1, visible)));
}

std::string describeDevice(const c10::Device& device) {
#ifdef GRAFT_WITH_CUDA
  cudaDeviceProp p{};
  if (device.is_cuda() && cudaGetDeviceProperties(&p, device.index()) == cudaSuccess)
    return device.str() + " (" + p.name + ", " + std::to_string(p.totalGlobalMem >> 30) + " GiB)";
#endif
  return device.str();
}

void useDevice(const c10::Device& device) {
  if (!device.is_cpu()) c10::impl::VirtualGuardImpl(device.type()).setDevice(device);
}

void moveModel(Transformer& model, const c10::Device& device) {
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters()) {
    if (p.device() == device) continue;
    if (hasMemory(p)) {
      p.set_data(p.to(device));
    } else {
      auto empty = torch::empty(p.sizes(), p.options().device(device));
      releaseMemory(empty);
      p.set_data(empty);
    }
  }
  model->to(device);  // the rest: every parameter is there already; the quantized codes follow
}

c10::ScalarType computeDtype(const std::string& precision) {
  if (precision == "fp32") return c10::kFloat;
  if (precision == "bf16") return c10::kBFloat16;
  throw InputError("train.precision: '" + precision + "' is not one of fp32, bf16");
}

}  // namespace graft
