// The wegeft command-line tool: finetune, generate, eval, inspect, merge, convert. Any failure
// prints one line "wegeft: error: ..." to stderr and exits 1 (2 for a usage error); outputs are
// written atomically.
#include <wegeft/io/gguf.hpp>
#include <wegeft/io/merge.hpp>
#include <wegeft/io/peft.hpp>
#include <wegeft/io/safetensors.hpp>
#include <wegeft/version.hpp>

#include "finetune.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

/// The two-character escapes \n, \t and \\ in a --stop value as a newline, a tab and a
/// backslash (as llama.cpp reads its prompts), so that a shell line can name them.
std::string unescape(const std::string& s) {
  std::string r;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() &&
        (s[i + 1] == 'n' || s[i + 1] == 't' || s[i + 1] == '\\')) {
      r += s[i + 1] == 'n' ? '\n' : s[i + 1] == 't' ? '\t' : '\\';
      ++i;
    } else {
      r += s[i];
    }
  }
  return r;
}

const char* kUsage = R"(usage: wegeft <command> [options]

commands:
  finetune --model PATH --data DIR [--method wegeft|lora|dora|head] [options]
      Fine-tune MODEL (a Hugging Face folder or a GGUF file) on DIR/train.jsonl (validated on
      DIR/valid.jsonl) as a causal LM or a classifier; writes the adapter to --out.
  generate --model PATH [--adapter DIR] --prompt TEXT [--max-tokens N] [--temperature T]
      Text from a causal LM, with a fine-tuned adapter or without (--device cuda: on the GPU).
  eval --model PATH [--adapter DIR [--merge]] --data DIR [--exact-match] [--predictions FILE]
      Loss and perplexity (causal LM; --exact-match: the share of completions greedy decoding
      reproduces) or loss, accuracy and macro-F1 (classifier) on DIR/test.jsonl (--json: one
      JSON line; --device cuda: on the GPU).
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
  return std::any_of(args.begin() + 1, args.end(),
                     [](const std::string& a) { return a == "-h" || a == "--help"; });
}

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::map<std::string, std::string> parse_options(const std::vector<std::string>& args,
                                                 std::size_t from,
                                                 const std::vector<std::string>& names) {
  std::map<std::string, std::string> out;
  for (std::size_t i = from; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (std::find(names.begin(), names.end(), a) == names.end())
      throw UsageError("unknown option '" + a + "'");
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
    std::printf("  %-60s %-8s %s\n", t.name.c_str(), wegeft::dtype_name(t.dtype),
                shape_text(t.shape).c_str());
    params += t.numel;
  }
  std::printf("  parameters: %zu\n", params);
}

void inspect_gguf(const std::string& path) {
  const wegeft::GgufReader f(path);
  std::printf("%s: GGUF v%u, %zu tensors, %zu metadata keys\n", path.c_str(), f.version(),
              f.tensors().size(), f.metadata().size());
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
    std::printf("  %-45s %-6s ne=[%s]\n", t.name.c_str(),
                type ? type : ("type " + std::to_string(t.type)).c_str(), ne.c_str());
    params += t.numel;
  }
  std::printf("  parameters: %zu\n", params);
}

int inspect(const std::string& path) {
  if (!fs::exists(path)) throw wegeft::Error(path + ": no such file or directory");
  if (fs::is_directory(path)) {
    if (fs::exists(fs::path(path) / wegeft::kAdapterConfigFile)) {
      const auto cfg = wegeft::read_adapter_config(path);
      std::printf("%s: %s adapter (%s) for '%s'\n%s\n", path.c_str(),
                  cfg.json.value("peft_type", "").c_str(), wegeft::method_name(cfg.spec.method),
                  cfg.base_model.c_str(), cfg.json.dump(2).c_str());
      inspect_safetensors((fs::path(path) / wegeft::kAdapterWeightsFile).string());
      return 0;
    }
    const bool checkpoint = fs::exists(fs::path(path) / "config.json") ||
                            fs::exists(fs::path(path) / "model.safetensors") ||
                            fs::exists(fs::path(path) / "model.safetensors.index.json");
    if (!checkpoint)
      throw wegeft::Error(path + ": a directory that is neither an adapter (no " +
                          wegeft::kAdapterConfigFile +
                          ") nor a checkpoint (no config.json or model.safetensors)");
    if (fs::exists(fs::path(path) / "config.json"))
      std::printf("%s: checkpoint, model_type %s\n", path.c_str(),
                  wegeft::detail::parse_json_strict(
                      wegeft::read_text_file((fs::path(path) / "config.json").string()), path)
                      .value("model_type", "?")
                      .c_str());
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
    if (gguf)
      inspect_gguf(path);
    else
      inspect_safetensors(path);
  } catch (const wegeft::Error& e) {
    throw wegeft::Error(e.what(),
                        std::string(gguf ? "as GGUF: " : "as safetensors: ") + e.message());
  }
  return 0;
}

/// Options of a --config FILE (a JSON object: {"rank": 8, "mask_prompt": true, ...}) as
/// command-line tokens, put before the real ones; an option given on the command line wins.
std::vector<std::string> with_config_file(const std::vector<std::string>& args) {
  std::vector<std::string> rest, given;
  std::string config;
  for (std::size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--config") {
      if (i + 1 >= args.size()) throw UsageError("option '--config' needs a value");
      config = args[++i];
      continue;
    }
    if (args[i].rfind("--", 0) == 0) given.push_back(args[i].substr(0, args[i].find('=')));
    rest.push_back(args[i]);
  }
  if (config.empty()) return rest;
  const auto j = wegeft::detail::parse_json_strict(wegeft::read_text_file(config), config);
  if (!j.is_object())
    throw wegeft::Error(config + ": a config file holds one JSON object of options");
  std::vector<std::string> out;
  for (const auto& [key, v] : j.items()) {
    std::string name = "--" + key;
    std::replace(name.begin(), name.end(), '_', '-');
    if (std::find(given.begin(), given.end(), name) != given.end()) continue;
    if (v.is_boolean()) {
      if (v.get<bool>()) out.push_back(name);
    } else if (v.is_string()) {
      out.push_back(name), out.push_back(v.get<std::string>());
    } else if (v.is_number()) {
      out.push_back(name), out.push_back(v.dump());
    } else {
      throw wegeft::Error(config + ": option '" + key +
                          "' must be a string, a number or true/false");
    }
  }
  out.insert(out.end(), rest.begin(), rest.end());
  return out;
}

int run_cli11(const std::string& cmd, const std::vector<std::string>& args) {
  CLI::App app{"", "wegeft " + cmd};
  app.option_defaults()->multi_option_policy(
      CLI::MultiOptionPolicy::TakeLast);  // a repeated option: the last one wins
  wegeft::tool::FinetuneOptions o;
  std::string adapter, prompt, split = "test", config;
  int max_tokens = 128;
  double temperature = 0.0, top_p = 1.0;
  bool raw = false, json = false, exact_match = false, merge = false;
  std::string predictions;
  std::vector<std::string> stop_strings;
  std::size_t max_seq = 512;
  wegeft::Index batch = 8;
  app.add_option("--model", o.model, "Hugging Face checkpoint folder or GGUF file")->required();
  app.add_option("--threads", o.threads, "threads for the dense products (default: all cores)");
  app.add_option("--precision", o.precision,
                 "the CPU's products with frozen weights: fp32, or bf16 where the CPU has "
                 "AVX512-BF16 (elsewhere fp32, with a note)")
      ->capture_default_str();
  app.add_option("--config", config,
                 "a JSON file of options (keys as the long options, '_' for '-')");
  if (cmd != "finetune")
    app.add_option("--device", o.device,
                   "cpu, or cuda: on GPU 0 in bf16, a llama or gpt2 causal LM or a bert classifier "
                   "(a build "
                   "with "
                   "-DWEGEFT_ENABLE_CUDA=ON)")
        ->capture_default_str();
  if (cmd == "finetune") {
    app.description(
        "Fine-tunes MODEL on DIR/train.jsonl with a WeGeFT or LoRA adapter, evaluating on "
        "DIR/valid.jsonl.\n"
        "Data: {\"text\"}, {\"prompt\", \"completion\"} or {\"messages\"} lines (causal LM); "
        "{\"text\", \"label\"} (classification).");
    app.add_option("--data", o.data, "folder holding train.jsonl and valid.jsonl")->required();
    app.add_option("--method", o.method,
                   "wegeft, lora, dora, or head (a classification head alone, no adapter)")
        ->capture_default_str();
    app.add_option("--rank", o.rank, "adapter rank (default: wegeft 64, lora 8)");
    app.add_option("--alpha", o.alpha, "scale numerator (default: wegeft 2 x rank, lora rank)");
    app.add_option("--dropout", o.dropout, "adapter dropout")->capture_default_str();
    app.add_option("--targets", o.targets, "comma-separated module names, or all-linear")
        ->capture_default_str();
    app.add_option(
        "--task", o.task,
        "causal-lm or classification (default: causal-lm for decoders, classification for BERT)");
    app.add_option("--iters", o.iters, "optimizer steps (default: from --epochs)");
    app.add_option("--epochs", o.epochs,
                   "passes over train.jsonl when --iters is not given (default 1)");
    app.add_option("--batch-size", o.batch_size, "examples per micro-batch")->capture_default_str();
    app.add_option("--grad-accum", o.grad_accum, "micro-batches per optimizer step")
        ->capture_default_str();
    app.add_option("--max-seq-length", o.max_seq_length, "tokens per example")
        ->capture_default_str();
    app.add_option("--on-long", o.on_long, "a longer example: truncate (and count) or error")
        ->capture_default_str();
    app.add_option("--lr", o.lr, "peak learning rate (default: wegeft 5e-4, lora and dora 1e-3)");
    app.add_option("--schedule", o.schedule, "cosine, linear or constant")->capture_default_str();
    app.add_option("--warmup", o.warmup, "warm-up steps (default: 5% of the steps)");
    app.add_option("--weight-decay", o.weight_decay, "AdamW weight decay")->capture_default_str();
    app.add_option("--max-grad-norm", o.max_grad_norm, "gradient clipping (<= 0: none)")
        ->capture_default_str();
    app.add_flag("--mask-prompt", o.mask_prompt, "no loss on prompts and non-assistant turns");
    app.add_option("--eval-every", o.eval_every,
                   "steps between validations (default: a tenth of the run)");
    app.add_option("--eval-batches", o.eval_batches,
                   "validation batches per evaluation (default: all)");
    app.add_option("--save-every", o.save_every,
                   "steps between saves (default: at each validation)");
    app.add_option("--report-every", o.report_every, "steps between progress lines")
        ->capture_default_str();
    app.add_option("--device", o.device,
                   "cpu, or cuda: the step on GPU 0 in bf16, a llama or gpt2 causal LM or a bert "
                   "classifier (a build with "
                   "-DWEGEFT_ENABLE_CUDA=ON)")
        ->capture_default_str();
    app.add_flag("--resume", o.resume, "continue the run saved in --out");
    app.add_option(
        "--stop-at", o.stop_at,
        "stop after this step (the schedule still spans --iters); continue with --resume");
    app.add_option("--seed", o.seed, "seed of the adapter init, dropout and data order")
        ->capture_default_str();
    app.add_option("--log", o.log, "append a JSON line per report to this file");
    app.add_option("--out", o.out, "adapter directory to write")->capture_default_str();
  } else if (cmd == "generate") {
    app.description(
        "Text from a causal LM (an instruct model's prompt goes through its chat template unless "
        "--raw).");
    app.add_option("--adapter", adapter, "adapter directory (finetune's --out, or a PEFT folder)");
    app.add_option("--prompt", prompt, "the prompt")->required();
    app.add_option("--max-tokens", max_tokens, "tokens to generate at most")->capture_default_str();
    app.add_option("--temperature", temperature, "0: greedy")->capture_default_str();
    app.add_option("--top-p", top_p, "nucleus sampling mass")->capture_default_str();
    app.add_option("--seed", o.seed, "sampling seed")->capture_default_str();
    app.add_flag("--raw", raw, "use the prompt as it is, without the chat template");
    app.add_option("--stop", stop_strings,
                   "also stop where the text first holds this string (cut there; repeatable)")
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  } else {
    app.description(
        "Loss and perplexity (causal LM) or loss, accuracy and macro-F1 (with a classification "
        "adapter) on "
        "DIR/SPLIT.jsonl.");
    app.add_option("--adapter", adapter, "adapter directory (finetune's --out, or a PEFT folder)");
    app.add_option("--data", o.data, "folder holding the JSONL files")->required();
    app.add_option("--split", split, "test, valid or train (test falls back to valid)")
        ->capture_default_str();
    app.add_option("--batch-size", batch, "examples per batch")->capture_default_str();
    app.add_option("--max-seq-length", max_seq, "tokens per example")->capture_default_str();
    app.add_flag("--mask-prompt", o.mask_prompt,
                 "score only completions / assistant turns (default: as the adapter was trained)");
    app.add_flag("--json", json, "print the scores as one JSON line");
    app.add_flag("--merge", merge,
                 "merge the adapter into the model's weights first and score the merged model "
                 "(what `wegeft merge` writes)");
    app.add_flag("--exact-match", exact_match,
                 "causal LM: also the share of examples whose completion greedy decoding from "
                 "the prompt reproduces exactly, up to a stop token");
    app.add_option("--predictions", predictions,
                   "write one JSON line per example (line, exact_match, target, greedy: the "
                   "greedy tokens up to the first wrong one); implies --exact-match");
    app.add_option("--stop", stop_strings,
                   "exact match: a generation also ends where its text first holds this string "
                   "(as generate --stop; repeatable); implies --exact-match")
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  }
  std::vector<std::string> tokens = with_config_file(args);
  std::reverse(tokens.begin(), tokens.end());  // CLI11 takes its arguments reversed
  try {
    app.parse(tokens);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return 0;
  } catch (const CLI::ParseError& e) {
    throw UsageError(cmd + ": " + e.what());
  }
  for (auto& st : stop_strings) st = unescape(st);
  if (cmd == "finetune") return wegeft::tool::finetune(o);
  if (cmd == "generate")
    return wegeft::tool::generate_command(o.model, adapter, prompt, max_tokens, temperature, top_p,
                                          o.seed, raw, o.threads, stop_strings, o.precision,
                                          o.device);
  return wegeft::tool::eval_command(o.model, adapter, o.data, split, batch, max_seq, o.mask_prompt,
                                    o.threads, json, exact_match, predictions, stop_strings,
                                    o.precision, merge, o.device);
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
  if (cmd == "finetune" || cmd == "generate" || cmd == "eval") return run_cli11(cmd, args);
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
