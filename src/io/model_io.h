// Model files in, whatever their format: loadModel() accepts a llama2.c .bin or a graft HDF5
// checkpoint (its /model group), and the /model group layout is written and read here only.
#pragma once

#include <string>

#include "io/hdf5.h"
#include "model/transformer.h"

namespace graft {

Transformer loadModel(const std::string& path);

// /model: one float32 dataset per parameter (parameter names as dataset names) and the
// architecture as attributes (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
// seq_len, tied, norm_eps, rope_theta).
void writeModelGroup(H5File& file, Transformer& model);
ModelConfig readModelConfig(const H5File& file);
// Copies /model tensors into `model`, checking names and shapes (errors name file and tensor).
void readModelWeights(const H5File& file, Transformer& model);

}  // namespace graft
