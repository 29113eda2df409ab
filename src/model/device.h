// Where a run's tensors live (train.device) and what its matrix products compute in
// (train.precision). The rest of graft is device-generic: tensors are made with the options of
// the parameters they belong to, so choosing the device here is the whole of the choice.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>

namespace graft {

// train.device resolved to a kind, before ranks know their place on the host: "auto" is CUDA when
// this LibTorch has CUDA and sees a GPU, else the CPU. "cuda" where there is none throws an
// InputError naming the key and what is missing.
c10::DeviceType chooseDeviceType(const std::string& setting);
// Rank `local_rank` of a host: GPU (local_rank mod visible GPUs) for CUDA, else the CPU.
c10::Device deviceOfRank(c10::DeviceType type, int local_rank);
// "cpu", or "cuda:1 (NVIDIA H200, 140 GB)", for a rank's start-up line.
std::string describeDevice(const c10::Device& device);
// train.precision: "fp32" -> float32, "bf16" -> bfloat16 (model/transformer.h setComputeDtype).
c10::ScalarType computeDtype(const std::string& precision);

}  // namespace graft
