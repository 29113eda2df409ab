// Where a run's tensors live (train.device) and what its matrix products compute in
// (train.precision). The rest of graft is device-generic: tensors are made with the options of
// the parameters they belong to, so choosing the device here is the whole of the choice.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>

#include "model/transformer.h"

namespace graft {

// train.device resolved to a kind, before ranks know their place on the host: "auto" is CUDA when
// this LibTorch has CUDA and sees a GPU, else the CPU. "cuda" where there is none throws an
// InputError naming the key and what is missing.
// `what` names the setting in errors ("train.device", "--device").
c10::DeviceType chooseDeviceType(const std::string& setting, const std::string& what = "train.device");
// Rank `local_rank` of a host: GPU (local_rank mod visible GPUs) for CUDA, else the CPU.
c10::Device deviceOfRank(c10::DeviceType type, int local_rank);
// Makes `device` this thread's current one (a GPU's allocations and kernels go there by default).
void useDevice(const c10::Device& device);
// "cpu", or "cuda:1 (NVIDIA H200, 139 GiB)", for a rank's start-up line.
std::string describeDevice(const c10::Device& device);
// Moves every parameter of `model` to `device`, those without memory (a model built to be filled
// by rows, dist.shard = parameters) included: they stay without memory, now on `device`, so that
// their rows are allocated there (Note [parameters without memory]). Quantized weights move too.
void moveModel(Transformer& model, const c10::Device& device);
// train.precision: "fp32" -> float32, "bf16" -> bfloat16 (model/transformer.h setComputeDtype).
c10::ScalarType computeDtype(const std::string& precision);

}  // namespace graft
