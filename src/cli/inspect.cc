// graft inspect PATH: what a file or folder is, without training on it. Models (Hugging Face
// folder or .safetensors, llama2.c .bin, graft .h5), graft checkpoints (with their training state),
// graft token datasets and tokenizers. Human-readable by default, --json for scripts; both are
// printed from the same Json document.
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/cli.h"
#include "config/command_line.h"
#include "formats/hdf5.h"
#include "convert/hf_model.h"
#include "formats/llama2c_header.h"
#include "convert/model_io.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace graft {
namespace po = boost::program_options;

namespace {

Json shapeJson(const std::vector<std::int64_t>& shape) {
  Json a = Json::array();
  for (auto d : shape) a.push(Json(d));
  return a;
}

std::int64_t numel(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

Json tensorJson(const std::string& name, const std::string& dtype, const std::vector<std::int64_t>& shape) {
  Json t = Json::object();
  t.set("name", name);
  t.set("dtype", dtype);
  t.set("shape", shapeJson(shape));
  return t;
}

Json architectureJson(const ModelConfig& c) {
  Json a = Json::object();
  a.set("family", c.arch);
  a.set("dim", c.dim);
  a.set("hidden_dim", c.hidden_dim);
  a.set("n_layers", c.n_layers);
  a.set("n_heads", c.n_heads);
  a.set("n_kv_heads", c.n_kv_heads);
  a.set("vocab_size", c.vocab_size);
  a.set("seq_len", c.seq_len);
  a.set("tied", c.tied);
  a.set("norm_eps", c.norm_eps);
  if (!c.isGpt2()) a.set("rope_theta", c.rope_theta);
  if (c.qkv_bias) a.set("qkv_bias", true);
  if (c.sliding_window) a.set("sliding_window", c.sliding_window);
  if (c.num_classes > 0) {
    a.set("num_classes", c.num_classes);
    a.set("pooling", c.pooling);
    if (!c.label_names.empty()) {
      Json names = Json::array();
      for (const auto& n : c.label_names) names.push(n);
      a.set("label_names", std::move(names));
    }
  }
  a.set("summary", c.describe());
  return a;
}

void addTensors(Json& doc, Json tensors) {
  std::int64_t params = 0;
  for (const auto& t : tensors.asArray("tensors")) {
    std::vector<std::int64_t> shape;
    for (const auto& d : t.at("shape", "tensor").asArray("shape")) shape.push_back(d.asInt("dim"));
    params += numel(shape);
  }
  doc.set("parameters", Json(params));
  doc.set("tensors", std::move(tensors));
}

Json inspectSafetensors(const std::string& path) {
  Json doc = Json::object();
  const auto files = SafetensorsFolder::open(path);
  Json tensors = Json::array();
  for (const auto& name : files.names()) {
    const auto& info = files.info(name);
    tensors.push(tensorJson(name, stDTypeName(info.dtype), info.shape));
  }
  if (isHfModel(path)) {
    doc.set("format", "hugging face model");
    doc.set("architecture", architectureJson(readHfConfig(hfModelFolder(path) + "/config.json")));
  } else {
    doc.set("format", "safetensors");
  }
  addTensors(doc, std::move(tensors));
  return doc;
}

Json modelTensors(const H5File& file) {
  Json tensors = Json::array();
  for (const auto& name : file.list("/model")) tensors.push(tensorJson(name, "F32", file.shape("/model/" + name)));
  return tensors;
}

// "[transfer] mode = X" of a resolved config, or full fine-tuning when it has none.
std::string flavourOf(const std::string& config) {
  std::istringstream in(config);
  std::string line, section;
  while (std::getline(in, line)) {
    const auto first = line.find_first_not_of(" \t");
    if (first == std::string::npos) continue;
    if (line[first] == '[') section = line.substr(first + 1, line.find(']') - first - 1);
    const auto eq = line.find('=');
    if (section == "transfer" && eq != std::string::npos && line.substr(first, eq - first).find("mode") == 0) {
      const auto v = line.find_first_not_of(" \t", eq + 1);
      return v == std::string::npos ? "" : line.substr(v, line.find_last_not_of(" \t\r") + 1 - v);
    }
  }
  return "full";
}

Json inspectHdf5(const std::string& path) {
  H5File file = H5File::openRead(path);
  Json doc = Json::object();
  const std::string format = file.hasAttr("/", "format") ? file.stringAttr("/", "format") : "";
  if (format == "graft-tokens") {
    doc.set("format", "graft token dataset");
    if (file.hasAttr("/", "tokenizer")) doc.set("tokenizer", file.stringAttr("/", "tokenizer"));
    doc.set("vocab_size", Json(file.intAttr("/", "vocab_size")));
    Json splits = Json::object();
    for (const auto& split : file.list("/")) {
      if (!file.exists("/" + split + "/tokens")) continue;
      Json s = Json::object();
      s.set("tokens", Json(numel(file.shape("/" + split + "/tokens"))));
      if (file.exists("/" + split + "/doc_offsets")) s.set("documents", Json(numel(file.shape("/" + split + "/doc_offsets")) - 1));
      splits.set(split, std::move(s));
    }
    doc.set("splits", std::move(splits));
    return doc;
  }
  if (!file.exists("/model"))
    throw InputError(path + ": an HDF5 file that is neither a graft model, checkpoint nor token dataset");
  doc.set("format", format == "graft-checkpoint" ? "graft checkpoint" : "graft model");
  doc.set("architecture", architectureJson(readModelConfig(file)));
  if (format == "graft-checkpoint") {
    Json state = Json::object();
    for (const char* key : {"version", "step", "world_size", "tokens_seen", "skipped_steps", "created_unix", "complete"})
      if (file.hasAttr("/", key)) state.set(key, Json(file.intAttr("/", key)));
    const std::string config = file.hasAttr("/", "config") ? file.stringAttr("/", "config") : "";
    state.set("flavour", flavourOf(config));
    if (hasTransferGroup(file)) {
      std::string base;
      const TransferConfig t = readTransferGroup(file, base);
      Json transfer = Json::object();
      transfer.set("mode", t.mode);
      transfer.set("lora_rank", t.lora_rank);
      transfer.set("lora_alpha", t.lora_alpha);
      transfer.set("lora_targets", t.lora_targets);
      transfer.set("quantize", t.quantize);
      transfer.set("base_model", base);
      doc.set("transfer", std::move(transfer));
    }
    state.set("config", config);
    doc.set("training", std::move(state));
  }
  addTensors(doc, modelTensors(file));
  return doc;
}

Json inspectLlama2c(const std::string& path) {
  // The header alone (checked against the file size): a 7B file is not read to list its shapes.
  std::ifstream in(path, std::ios::binary);
  std::string header(kLlama2cHeaderBytes, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header.size()));
  header.resize(static_cast<std::size_t>(std::max<std::streamsize>(0, in.gcount())));
  in.clear();
  in.seekg(0, std::ios::end);
  const ModelConfig config = parseLlama2cHeader(header, static_cast<std::uint64_t>(std::max<std::streamoff>(0, in.tellg())), path);
  Json doc = Json::object();
  doc.set("format", "llama2.c model");
  doc.set("architecture", architectureJson(config));
  Json tensors = Json::array();
  for (const auto& t : llama2cTensors(config)) tensors.push(tensorJson(t.name, "F32", t.shape));
  addTensors(doc, std::move(tensors));
  return doc;
}

Json inspect(const std::string& path) {
  if (!fileExists(path)) throw InputError(path + ": not found");
  Json doc;
  if (isDirectory(path) && fileExists(path + "/adapter_config.json")) {
    doc = Json::object();
    doc.set("format", "peft adapter");
    const Json config = parseJson(readFile(path + "/adapter_config.json"), path + "/adapter_config.json");
    doc.set("adapter_config", config);
    const auto files = SafetensorsFolder::open(path + "/adapter_model.safetensors");
    Json tensors = Json::array();
    for (const auto& name : files.names()) tensors.push(tensorJson(name, stDTypeName(files.info(name).dtype), files.info(name).shape));
    addTensors(doc, std::move(tensors));
  } else if (isHfModel(path) || endsWith(path, ".safetensors")) {
    doc = inspectSafetensors(path);
  } else if (H5File::isHdf5(path)) {
    doc = inspectHdf5(path);
  } else {
    // A llama2.c model and a llama2.c tokenizer are both headerless .bin files: try both.
    try {
      doc = inspectLlama2c(path);
    } catch (const InputError& as_model) {
      try {
        const auto tokenizer = loadTokenizer(path);
        doc = Json::object();
        doc.set("format", "tokenizer");
        doc.set("tokenizer", tokenizer->describe());
        doc.set("vocab_size", tokenizer->vocabSize());
      } catch (const InputError& as_tokenizer) {
        throw InputError(path + ": not a model, checkpoint, dataset or tokenizer graft reads (as a llama2.c model: " +
                         as_model.what() + "; as a tokenizer: " + as_tokenizer.what() + ")");
      }
    }
  }
  Json out = Json::object();
  out.set("path", path);
  for (const auto& [k, v] : doc.asObject("inspect")) out.set(k, v);
  return out;
}

std::string withCommas(std::int64_t n) {
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<std::size_t>(i), ",");
  return s;
}

void printHuman(const Json& doc) {
  for (const auto& [key, value] : doc.asObject("inspect")) {
    if (key == "tensors") {
      const auto& list = value.asArray("tensors");
      std::printf("tensors: %zu\n", list.size());
      for (const auto& t : list)
        std::printf("  %-48s %-5s %s\n", t.at("name", "t").asString("name").c_str(), t.at("dtype", "t").asString("dtype").c_str(),
                    t.at("shape", "t").dump().c_str());
    } else if (key == "architecture") {
      std::printf("architecture: %s\n", value.at("summary", "a").asString("summary").c_str());
    } else if (key == "parameters") {
      std::printf("parameters: %s\n", withCommas(value.asInt("parameters")).c_str());
    } else if (value.isObject() && key == "adapter_config") {
      std::printf("%s: %s\n", key.c_str(), value.dump().c_str());
    } else if (value.isObject()) {
      std::printf("%s:\n", key.c_str());
      for (const auto& [k, v] : value.asObject(key)) {
        if (k == "config") {
          std::printf("  config:\n");
          std::istringstream in(v.asString("config"));
          for (std::string line; std::getline(in, line);) std::printf("    %s\n", line.c_str());
        } else {
          std::printf("  %s: %s\n", k.c_str(), v.isString() ? v.asString(k).c_str() : v.dump().c_str());
        }
      }
    } else {
      std::printf("%s: %s\n", key.c_str(), value.isString() ? value.asString(key).c_str() : value.dump().c_str());
    }
  }
}

}  // namespace

int runInspect(const Args& args) {
  std::string path;
  bool json = false;
  po::options_description options("graft inspect options");
  options.add_options()
      ("path", po::value(&path)->required(), "model, checkpoint, dataset or tokenizer")
      ("json", po::bool_switch(&json), "print one JSON document instead of text");
  po::positional_options_description positional;
  positional.add("path", 1);
  po::variables_map vm;
  if (!parseCommandLine(args, "usage: graft inspect PATH [--json]\n"
                              "Format, architecture, tensors (shape, dtype), parameter count; for checkpoints the\n"
                              "training state (step, world size, flavour, config).",
                        options, vm, &positional))
    return 0;
  const Json doc = inspect(path);
  if (json) {
    std::printf("%s\n", doc.dump(2).c_str());
  } else {
    printHuman(doc);
  }
  return 0;
}

}  // namespace graft
