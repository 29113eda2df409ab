// Model files in and out, whatever their format: loadModel() accepts a llama2.c .bin, a graft HDF5
// model or checkpoint (its /model group), or a Hugging Face folder / .safetensors file; saveModel()
// writes any of them. The /model group layout is written and read here only.
#pragma once

#include <string>

#include "convert/model_source.h"
#include "formats/hdf5.h"
#include "model/transfer.h"
#include "model/transformer.h"

namespace graft {

Transformer loadModel(const std::string& path);
// The same formats read row range by row range (convert/model_source.h): every tensor is checked
// (present, shape, type) before anything is read. nullptr for an adapter-only checkpoint: it is
// loaded whole (its base, then the transfer, then the adapters).
std::unique_ptr<ModelSource> openModelSource(const std::string& path);

// "hf" (a folder: config.json + model.safetensors), "llama2c" (a .bin file) or "graft" (an .h5
// file holding /model). Formats that cannot hold the model (llama2.c for gpt2) are InputErrors.
void saveModel(Transformer& model, const std::string& format, const std::string& out, const std::string& dtype = "f32");
// The format a path names when written: a .bin file -> llama2c, .h5 -> graft, else hf.
std::string formatForPath(const std::string& out);

// /model: one float32 dataset per parameter (parameter names as dataset names) and the
// architecture as attributes (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
// seq_len, tied, norm_eps, rope_theta).
// With `trainable_only`, just the parameters that train (adapters) and attr adapter_only = 1.
// Without `tensors`, the attributes only (the caller writes the datasets).
void writeModelGroup(H5File& file, Transformer& model, bool trainable_only = false, bool tensors = true);
ModelConfig readModelConfig(const H5File& file);
// Copies /model tensors into `model`, checking names and shapes (errors name file and tensor). For an
// adapter-only group, the model's trainable parameters (its adapters) are read.
void readModelWeights(const H5File& file, Transformer& model);
// InputError naming the file and tensor unless /model/<name> is a float32 dataset of `shape`.
void checkModelTensor(const H5File& file, const std::string& name, const std::vector<std::int64_t>& shape);

// /transfer: the flavour of an adapter-only checkpoint and the base model it adapts.
void writeTransferGroup(H5File& file, const TransferConfig& transfer, const std::string& base_model);
bool hasTransferGroup(const H5File& file);
TransferConfig readTransferGroup(const H5File& file, std::string& base_model);

}  // namespace graft
