// serve_signatures: load a SavedModel and run its signatures from C++, with no Python in the process.
//
// It uses `tensorflow::LoadSavedModel` (tensorflow/cc/saved_model/loader.h), the loader the TF model
// server itself uses, with the "serve" tag, and runs each signature by the tensor names its
// SignatureDef gives (MetaGraphDef.signature_def), as the server does for a Predict request.
// tests/cngpt_tf/export/test_cpp_loader.py builds it against the pip TensorFlow and compares its
// results with `tf.saved_model.load` of the same folder.
//
// XLA: the decode loop is a `jit_compile=True` function, run by the XLA:CPU JIT. That JIT is on by
// default in the TensorFlow library: no SessionOptions/ConfigProto setting and no TF_XLA_FLAGS are
// needed. The model server is different only because its main() calls
// `tensorflow::DisableXlaCompilation()` unless it gets `--xla_cpu_compilation_enabled=true`; the flag
// `--no_xla` here makes the same call, so the test can show that the generation signatures then fail.
//
// Usage:
//   serve_signatures SAVED_MODEL_DIR --list
//       one line per signature: "signature NAME " + its SignatureDef in one-line protobuf text format.
//   serve_signatures SAVED_MODEL_DIR [--no_xla] < REQUESTS
//       REQUESTS, one block per request:
//         run SIGNATURE
//         one line per input: a tensorflow.NamedTensorProto in one-line text format, name = input key
//         end
//       prints "loaded SECONDS" once, then per request either
//         "result SIGNATURE SECONDS", one NamedTensorProto line per output (name = output key), "end"
//       or "error SIGNATURE STATUS" (the status on one line); the next request still runs.
// Exit status: 0 when every request ran, 1 when one failed, 2 on a usage or load error.

#include <algorithm>
#include <chrono>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/text_format.h"
#include "tensorflow/cc/saved_model/loader.h"
#include "tensorflow/compiler/jit/flags.h"  // DisableXlaCompilation
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/protobuf/named_tensor.pb.h"

namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// One line of protobuf text: the test reads it back with google.protobuf.text_format.
std::string OneLine(const google::protobuf::Message& message) {
  google::protobuf::TextFormat::Printer printer;
  printer.SetSingleLineMode(true);
  std::string text;
  printer.PrintToString(message, &text);
  return text;
}

std::string Flat(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return text;
}

// Runs one request: `inputs` are keyed by the signature's input keys; the feeds and fetches are the
// tensor names the SignatureDef maps those keys to. Outputs come back in the map's key order.
absl::Status RunSignature(const tensorflow::SavedModelBundle& bundle, const std::string& name,
                                const std::vector<tensorflow::NamedTensorProto>& inputs,
                                std::vector<std::pair<std::string, tensorflow::Tensor>>* outputs) {
  const auto& signatures = bundle.GetSignatures();
  auto found = signatures.find(name);
  if (found == signatures.end()) return absl::NotFoundError(absl::StrCat("no signature ", name));
  const tensorflow::SignatureDef& signature = found->second;

  std::vector<std::pair<std::string, tensorflow::Tensor>> feeds;
  for (const auto& input : inputs) {
    auto info = signature.inputs().find(input.name());
    if (info == signature.inputs().end()) {
      return absl::InvalidArgumentError(absl::StrCat("signature ", name, " has no input ", input.name()));
    }
    tensorflow::Tensor tensor;
    if (!tensor.FromProto(input.tensor())) {
      return absl::InvalidArgumentError(absl::StrCat("input ", input.name(), ": not a valid TensorProto"));
    }
    feeds.emplace_back(info->second.name(), std::move(tensor));
  }
  std::vector<std::string> keys, fetches;
  for (const auto& [key, info] : signature.outputs()) {  // protobuf Map: sort for a stable order
    keys.push_back(key);
  }
  std::sort(keys.begin(), keys.end());
  for (const auto& key : keys) fetches.push_back(signature.outputs().at(key).name());

  std::vector<tensorflow::Tensor> results;
  TF_RETURN_IF_ERROR(bundle.GetSession()->Run(feeds, fetches, {}, &results));
  for (size_t i = 0; i < keys.size(); ++i) outputs->emplace_back(keys[i], results[i]);
  return absl::OkStatus();
}

// Reads requests from stdin until EOF; returns false when any request failed.
bool ServeRequests(const tensorflow::SavedModelBundle& bundle) {
  bool all_ok = true;
  std::string line, name;
  std::vector<tensorflow::NamedTensorProto> inputs;
  while (std::getline(std::cin, line)) {
    if (line.rfind("run ", 0) == 0) {
      name = line.substr(4);
      inputs.clear();
    } else if (line == "end") {
      std::vector<std::pair<std::string, tensorflow::Tensor>> outputs;
      const auto start = Clock::now();
      const absl::Status status = RunSignature(bundle, name, inputs, &outputs);
      const double seconds = SecondsSince(start);
      if (!status.ok()) {
        std::cout << "error " << name << " " << Flat(status.ToString()) << std::endl;
        all_ok = false;
        continue;
      }
      std::cout << "result " << name << " " << seconds << "\n";
      for (const auto& [key, tensor] : outputs) {
        tensorflow::NamedTensorProto named;
        named.set_name(key);
        tensor.AsProtoField(named.mutable_tensor());  // typed fields: float_val, int_val, string_val
        std::cout << OneLine(named) << "\n";
      }
      std::cout << "end" << std::endl;
    } else if (!line.empty()) {
      tensorflow::NamedTensorProto input;
      if (!google::protobuf::TextFormat::ParseFromString(line, &input)) {
        std::cout << "error " << name << " INVALID_ARGUMENT: not a NamedTensorProto line" << std::endl;
        return false;
      }
      inputs.push_back(std::move(input));
    }
  }
  return all_ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::cerr << "usage: " << argv[0] << " SAVED_MODEL_DIR [--list | --no_xla] < REQUESTS\n";
    return 2;
  }
  const std::string flag = argc == 3 ? argv[2] : "";
  if (!flag.empty() && flag != "--list" && flag != "--no_xla") {
    std::cerr << "unknown flag " << flag << "\n";
    return 2;
  }
  if (flag == "--no_xla") tensorflow::DisableXlaCompilation();  // the model server's default

  const auto start = Clock::now();
  tensorflow::SavedModelBundle bundle;
  const absl::Status loaded =
      tensorflow::LoadSavedModel(tensorflow::SessionOptions(), tensorflow::RunOptions(), argv[1],
                                 {"serve"}, &bundle);
  if (!loaded.ok()) {
    std::cerr << "cannot load " << argv[1] << ": " << loaded << "\n";
    return 2;
  }
  std::cout << "loaded " << SecondsSince(start) << std::endl;

  if (flag == "--list") {
    for (const auto& [name, signature] : bundle.GetSignatures()) {
      if (name == "__saved_model_init_op") continue;  // the init op TF2 exports keep here, not a signature
      std::cout << "signature " << name << " " << OneLine(signature) << "\n";
    }
    return 0;
  }
  return ServeRequests(bundle) ? 0 : 1;
}
