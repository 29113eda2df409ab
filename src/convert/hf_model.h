// Hugging Face model folders in and out: config.json + model.safetensors (or sharded
// model-0000K-of-0000N.safetensors with model.safetensors.index.json).
//
// Families (model_type): gpt2 (GPT2LMHeadModel), llama, mistral and qwen2 (all graft's llama
// family; mistral adds sliding_window, qwen2 q/k/v biases). Names map onto graft's (model/transformer.h):
//   gpt2:  wte -> tok_embeddings, wpe -> pos_embeddings, h.<i>.ln_1 -> attention_norm,
//          attn.c_attn [in, 3 out] -> wq|wk|wv (Conv1D weights are stored [in, out]: transposed),
//          attn.c_proj -> wo, ln_2 -> ffn_norm, mlp.c_fc -> w1, mlp.c_proj -> w2, ln_f -> norm
//   llama: embed_tokens -> tok_embeddings, input_layernorm -> attention_norm,
//          self_attn.{q,k,v,o}_proj -> w{q,k,v,o}, post_attention_layernorm -> ffn_norm,
//          mlp.{gate,down,up}_proj -> w{1,2,3}, norm -> norm, lm_head -> output.
//   sequence classifiers (*ForSequenceClassification): score -> head (last-token pooling),
//          id2label -> ModelConfig::label_names; no lm_head (graft ties its LM head).
// Note [rotary layouts]: Hugging Face rotates halves (dimension i pairs with i + D/2) where graft,
// like Meta and llama2.c, rotates interleaved pairs (2i, 2i + 1). The rows of q_proj and k_proj
// (and their biases) are permuted on the way in and permuted back on the way out, exactly as
// transformers' convert_llama_weights_to_hf.py does, so export -> import is bitwise.
#pragma once

#include <memory>
#include <string>

#include "convert/model_source.h"
#include "formats/safetensors.h"
#include "model/transformer.h"

namespace graft {

// A folder holding config.json, or a .safetensors file with config.json beside it.
bool isHfModel(const std::string& path);
// The folder of an HF model path (the path itself, or the .safetensors file's directory).
std::string hfModelFolder(const std::string& path);

// config.json -> ModelConfig; an unsupported model_type, activation or rope_scaling is an
// InputError naming the file and the field.
ModelConfig readHfConfig(const std::string& config_json_path);

// Loads weights of any stored float dtype (F32, F16, BF16, F64) into float32. Every tensor the
// model needs must be present with its exact shape; unknown tensors are errors too (a file that
// holds something else should not load quietly). Errors name the file and the tensor.
Transformer loadHfModel(const std::string& path);
// The same folder read row range by row range (convert/model_source.h); every tensor is located
// and its shape checked when it opens.
std::unique_ptr<ModelSource> openHfSource(const std::string& path);

// Writes config.json and model.safetensors (names, shapes and layout as transformers'
// save_pretrained) into `dir`, created if needed. `dtype` is F32, F16 or BF16.
void saveHfModel(Transformer& model, const std::string& dir, StDType dtype);

}  // namespace graft
