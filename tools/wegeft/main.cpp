// The wegeft command-line tool: inspect, merge, convert. Any failure prints one line
// "wegeft: error: ..." to stderr and exits 1 (2 for a usage error); outputs are written atomically.
#include <wegeft/io/gguf.hpp>
#include <wegeft/io/merge.hpp>
#include <wegeft/io/peft.hpp>
#include <wegeft/io/safetensors.hpp>
#include <wegeft/version.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

const char* kUsage = R"(usage: wegeft <command> [options]

commands:
  inspect PATH
      Tensors (name, dtype, shape), parameter counts and metadata of a .safetensors file, a
      .gguf file, a Hugging Face checkpoint directory or an adapter directory (its config too).
  merge --base MODEL --adapter DIR --out FILE
      MODEL (a checkpoint directory or .safetensors file) with the LoRA, DoRA or WeGeFT adapter in
      DIR merged in, written to FILE as safetensors. Every other tensor is copied unchanged and
      every tensor keeps its dtype.
  convert --adapter DIR --base MODEL --out FILE.gguf
      A PEFT LoRA directory for a Llama model as a GGUF LoRA adapter for llama.cpp. MODEL is the
      base checkpoint directory (its config.json gives the head counts).

Each command answers --help. Options:
  -h, --help     this text
  --version      the wegeft version
)";

const std::map<std::string, const char*> kCommandUsage = {
    {"inspect", R"(usage: wegeft inspect PATH

Prints the tensors (name, dtype, shape), parameter counts and metadata of PATH: a .safetensors
file, a .gguf file, a Hugging Face checkpoint directory (config.json + model.safetensors or its
shards) or an adapter directory (adapter_config.json + adapter_model.safetensors).
)"},
    {"merge", R"(usage: wegeft merge --base MODEL --adapter DIR --out FILE

Writes FILE (safetensors): MODEL, a checkpoint directory or .safetensors file, with the LoRA, DoRA
or WeGeFT adapter in DIR merged into its weights. Every tensor of the adapter is checked against
its config and the weight it changes first; every other tensor is copied unchanged and every
tensor keeps its dtype. FILE is written atomically: on any error it is left as it was.
)"},
    {"convert", R"(usage: wegeft convert --adapter DIR --base MODEL --out FILE.gguf

Writes the PEFT LoRA adapter in DIR, for the Llama-family checkpoint directory MODEL (its
config.json gives the head counts), as a GGUF LoRA adapter that llama.cpp loads.
)"},
};

bool wants_help(const std::vector<std::string>& args) {
  return std::any_of(args.begin() + 1, args.end(), [](const std::string& a) { return a == "-h" || a == "--help"; });
}

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::map<std::string, std::string> parse_options(const std::vector<std::string>& args, std::size_t from,
                                                 const std::vector<std::string>& names) {
  std::map<std::string, std::string> out;
  for (std::size_t i = from; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (std::find(names.begin(), names.end(), a) == names.end()) throw UsageError("unknown option '" + a + "'");
    if (i + 1 >= args.size()) throw UsageError("option '" + a + "' needs a value");
    out[a] = args[++i];
  }
  for (const auto& n : names)
    if (!out.count(n)) throw UsageError("missing option " + n);
  return out;
}

std::string shape_text(const std::vector<std::int64_t>& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

void inspect_safetensors(const std::string& path) {
  const wegeft::SafetensorsReader f(path);
  std::size_t params = 0;
  std::printf("%s: safetensors, %zu tensors\n", path.c_str(), f.tensors().size());
  for (const auto& [k, v] : f.metadata()) std::printf("  metadata %s = %s\n", k.c_str(), v.c_str());
  for (const auto& t : f.tensors()) {
    std::printf("  %-60s %-8s %s\n", t.name.c_str(), wegeft::dtype_name(t.dtype), shape_text(t.shape).c_str());
    params += t.numel;
  }
  std::printf("  parameters: %zu\n", params);
}

void inspect_gguf(const std::string& path) {
  const wegeft::GgufReader f(path);
  std::printf("%s: GGUF v%u, %zu tensors, %zu metadata keys\n", path.c_str(), f.version(), f.tensors().size(),
              f.metadata().size());
  for (const auto& [k, v] : f.metadata().items()) {
    std::string text = v.is_array() ? "[" + std::to_string(v.size()) + " values]" : v.dump();
    if (text.size() > 80) text = text.substr(0, 77) + "...";
    std::printf("  %-45s %s\n", k.c_str(), text.c_str());
  }
  std::size_t params = 0;
  for (const auto& t : f.tensors()) {
    std::string ne;
    for (auto d : t.ne) ne += (ne.empty() ? "" : ", ") + std::to_string(d);
    const char* type = wegeft::ggml_type_name(t.type);
    std::printf("  %-45s %-6s ne=[%s]\n", t.name.c_str(), type ? type : ("type " + std::to_string(t.type)).c_str(), ne.c_str());
    params += t.numel;
  }
  std::printf("  parameters: %zu\n", params);
}

int inspect(const std::string& path) {
  if (!fs::exists(path)) throw wegeft::Error(path + ": no such file or directory");
  if (fs::is_directory(path)) {
    if (fs::exists(fs::path(path) / wegeft::kAdapterConfigFile)) {
      const auto cfg = wegeft::read_adapter_config(path);
      std::printf("%s: %s adapter (%s) for '%s'\n%s\n", path.c_str(), cfg.json.value("peft_type", "").c_str(),
                  wegeft::method_name(cfg.spec.method), cfg.base_model.c_str(), cfg.json.dump(2).c_str());
      inspect_safetensors((fs::path(path) / wegeft::kAdapterWeightsFile).string());
      return 0;
    }
    const bool checkpoint = fs::exists(fs::path(path) / "config.json") || fs::exists(fs::path(path) / "model.safetensors") ||
                            fs::exists(fs::path(path) / "model.safetensors.index.json");
    if (!checkpoint)
      throw wegeft::Error(path + ": a directory that is neither an adapter (no " + wegeft::kAdapterConfigFile +
                          ") nor a checkpoint (no config.json or model.safetensors)");
    if (fs::exists(fs::path(path) / "config.json"))
      std::printf("%s: checkpoint, model_type %s\n", path.c_str(),
                  wegeft::detail::parse_json_strict(wegeft::read_text_file((fs::path(path) / "config.json").string()), path)
                      .value("model_type", "?").c_str());
    for (const auto& f : wegeft::checkpoint_files(path)) inspect_safetensors(f);
    return 0;
  }
  if (!fs::is_regular_file(path)) throw wegeft::Error(path + ": not a regular file");
  std::FILE* f = std::fopen(path.c_str(), "rb");
  char magic[4] = {};
  const bool gguf = (f && std::fread(magic, 1, 4, f) == 4 && std::string(magic, 4) == "GGUF") ||
                    fs::path(path).extension() == ".gguf";
  if (f) std::fclose(f);
  try {
    if (gguf) inspect_gguf(path);
    else inspect_safetensors(path);
  } catch (const wegeft::Error& e) {
    throw wegeft::Error(e.what(), std::string(gguf ? "as GGUF: " : "as safetensors: ") + e.message());
  }
  return 0;
}

int run(const std::vector<std::string>& args) {
  if (args.empty()) throw UsageError("no command given");
  const std::string& cmd = args[0];
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (kCommandUsage.count(cmd) && wants_help(args)) {
    std::fputs(kCommandUsage.at(cmd), stdout);
    return 0;
  }
  if (cmd == "--version") {
    std::printf("wegeft %s\n", wegeft::version);
    return 0;
  }
  if (cmd == "inspect") {
    if (args.size() != 2) throw UsageError("inspect takes one PATH");
    return inspect(args[1]);
  }
  if (cmd == "merge") {
    const auto o = parse_options(args, 1, {"--base", "--adapter", "--out"});
    const auto n = wegeft::merge_adapter(o.at("--base"), o.at("--adapter"), o.at("--out"));
    std::printf("merged %ld modules into %s\n", static_cast<long>(n), o.at("--out").c_str());
    return 0;
  }
  if (cmd == "convert") {
    const auto o = parse_options(args, 1, {"--adapter", "--base", "--out"});
    const std::string config = (fs::path(o.at("--base")) / "config.json").string();
    const auto n = wegeft::convert_lora_to_gguf(o.at("--adapter"), config, o.at("--out"));
    std::printf("wrote %ld LoRA modules to %s\n", static_cast<long>(n), o.at("--out").c_str());
    return 0;
  }
  throw UsageError("unknown command '" + cmd + "'");
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  try {
    return run(args);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "wegeft: %s (see wegeft --help)\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    const auto* error = dynamic_cast<const wegeft::Error*>(&e);
    std::string msg = error ? error->message() : e.what();
    if (msg.rfind("wegeft: ", 0) == 0) msg = msg.substr(8);
    for (char& c : msg)
      if (c == '\n') c = ' ';
    std::fprintf(stderr, "wegeft: error: %s\n", msg.c_str());
    return 1;
  }
}
