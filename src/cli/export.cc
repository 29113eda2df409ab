// graft export / graft convert: a model from any format graft reads into one other tools load.
#include <torch/torch.h>

#include <cstdio>

#include "checkpoint/checkpoint.h"
#include "cli/cli.h"
#include "config/command_line.h"
#include "formats/hdf5.h"
#include "convert/hf_model.h"
#include "convert/peft.h"
#include "convert/model_io.h"
#include "model/transfer_apply.h"
#include "util/error.h"
#include "util/files.h"

namespace graft {
namespace po = boost::program_options;

namespace {

// What `format` writes under `out`; an existing one is kept unless --force.
void refuseToOverwrite(const std::string& format, const std::string& out, bool force) {
  const std::string target = format == "hf" ? out + "/model.safetensors"
                             : format == "peft" ? out + "/adapter_model.safetensors"
                             : format == "llama2c" && isDirectory(out) ? out + "/model.bin"
                                                                     : out;
  if (!force && fileExists(target))
    throw InputError(target + ": already exists; pass --force to replace it");
}

// The base model an adapter-only checkpoint adapts, else the path itself.
std::string baseOf(const std::string& model_path) {
  if (!H5File::isHdf5(model_path)) return model_path;
  H5File file = H5File::openRead(model_path);
  if (!hasTransferGroup(file)) return model_path;
  std::string base;
  readTransferGroup(file, base);
  return base;
}

int convert(const std::string& model_path, const std::string& adapter, const std::string& format, const std::string& out,
            const std::string& dtype, bool force, bool verify) {
  if (out.empty()) throw InputError("--out is required");
  refuseToOverwrite(format, out, force);
  checkModelFile(model_path, verify);
  auto model = loadModel(model_path);
  if (!adapter.empty()) loadPeftAdapter(model, adapter);
  if (format == "peft") {
    if (dtype != "f32") throw InputError("--dtype: PEFT adapters are written as f32");
    savePeftAdapter(model, out, baseOf(model_path));
  } else {
    if (model->promptLength())
      throw InputError(model_path + ": a soft prompt cannot be merged into weights; export it with --format peft");
    mergeAdapters(model);  // LoRA (and a quantized base) folded into plain weights
    saveModel(model, format, out, dtype);
  }
  std::int64_t params = 0;
  for (const auto& p : model->parameters()) params += p.numel();
  std::printf("%s -> %s (%s, %s, %lld parameters)\n", model_path.c_str(), out.c_str(), format.c_str(),
              model->config().describe().c_str(), static_cast<long long>(params));
  return 0;
}

}  // namespace

int runExport(const Args& args) {
  std::string model_path, adapter, format, out, dtype;
  bool force = false, no_verify = false;
  po::options_description options("graft export options");
  options.add_options()
      ("model", po::value(&model_path)->required(),
       "model: llama2.c .bin, graft .h5 (model, checkpoint or adapter checkpoint), or Hugging Face folder")
      ("adapter", po::value(&adapter), "a PEFT LoRA adapter folder to apply to --model first")
      ("format", po::value(&format)->required(),
       "hf (folder: config.json + model.safetensors) | llama2c (.bin) | graft (.h5) | peft (the adapters alone); "
       "adapters are merged into the weights except for peft")
      ("out", po::value(&out)->required(), "output folder (hf) or file (llama2c: a folder gets model.bin)")
      ("dtype", po::value(&dtype)->default_value("f32"), "hf storage type: f32 | f16 | bf16")
      ("force", po::bool_switch(&force), "replace an existing output")
      ("no-verify", po::bool_switch(&no_verify), "do not check a graft checkpoint given as --model against its manifest first (for very large ones; the log says so)");
  po::variables_map vm;
  if (!parseCommandLine(args, "usage: graft export --model M --format hf|llama2c|graft --out DIR [--dtype bf16]\n"
                              "Writes the model in a format other tools load (Hugging Face transformers, llama2.c's run.c).",
                        options, vm))
    return 0;
  return convert(model_path, adapter, format, out, dtype, force, !no_verify);
}

int runConvert(const Args& args) {
  std::string in, out, format, dtype;
  bool force = false, no_verify = false;
  po::options_description options("graft convert options");
  options.add_options()
      ("in", po::value(&in)->required(), "model in any format graft reads")
      ("out", po::value(&out)->required(), "where to write it")
      ("format", po::value(&format), "hf | llama2c | graft (default: from --out: .bin llama2c, .h5 graft, else hf)")
      ("dtype", po::value(&dtype)->default_value("f32"), "hf storage type: f32 | f16 | bf16")
      ("force", po::bool_switch(&force), "replace an existing output")
      ("no-verify", po::bool_switch(&no_verify), "do not check a graft checkpoint given as IN against its manifest first");
  po::positional_options_description positional;
  positional.add("in", 1).add("out", 1);
  po::variables_map vm;
  if (!parseCommandLine(args, "usage: graft convert IN OUT [--format F] [--dtype bf16]\n"
                              "Converts a model between formats; the output format follows OUT's extension.",
                        options, vm, &positional))
    return 0;
  return convert(in, "", format.empty() ? formatForPath(out) : format, out, dtype, force, !no_verify);
}

}  // namespace graft
