// wegeft finetune / generate / eval: fine-tune a pretrained model on JSONL data, sample from it,
// and score it. Part of the wegeft tool (main.cpp); options parsed with CLI11.
#pragma once

#include <sys/resource.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <wegeft/io/checkpoint.hpp>
#include <wegeft/io/gguf_model.hpp>
#include <wegeft/io/hf_model.hpp>
#include <wegeft/io/peft.hpp>
#include <wegeft/text/dataset.hpp>
#include <wegeft/text/exact_match.hpp>
#include <wegeft/train/metrics.hpp>
#include <wegeft/train/trainer.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace wegeft::tool {

namespace fs = std::filesystem;
using text::Task;

/// Every finetune option; also what finetune.json in the output directory records.
struct FinetuneOptions {
  std::string model, data, out = "adapter", method = "wegeft", targets = "all-linear", task,
                           schedule = "cosine", log;
  std::string on_long = "truncate";
  std::string device = "cpu";      // cpu, or cuda (a build with wegeft::cuda)
  std::string precision = "fp32";  // the CPU's frozen products: fp32 or bf16 (AMX, AVX512-BF16)
  Index rank = 0;                  // 0: the method's default
  double alpha = 0, lr = 0, dropout = 0, weight_decay = 0, max_grad_norm = 1.0, epochs = 0;
  std::int64_t iters = 0, stop_at = 0, warmup = -1, eval_every = 0, save_every = 0,
               report_every = 10, eval_batches = 0;
  Index batch_size = 4, grad_accum = 1;
  std::size_t max_seq_length = 512;
  bool mask_prompt = false, resume = false;
  std::uint64_t seed = 0;
  int threads = 0;
};

inline nlohmann::ordered_json to_json(const FinetuneOptions& o) {
  return {{"model", o.model},
          {"data", o.data},
          {"method", o.method},
          {"rank", o.rank},
          {"alpha", o.alpha},
          {"targets", o.targets},
          {"task", o.task},
          {"iters", o.iters},
          {"batch_size", o.batch_size},
          {"max_seq_length", o.max_seq_length},
          {"lr", o.lr},
          {"schedule", o.schedule},
          {"warmup", o.warmup},
          {"grad_accum", o.grad_accum},
          {"mask_prompt", o.mask_prompt},
          {"dropout", o.dropout},
          {"weight_decay", o.weight_decay},
          {"max_grad_norm", o.max_grad_norm},
          {"seed", o.seed},
          {"device", o.device},
          {"precision", o.precision}};
}

/// --precision: bf16 turns the model's bf16 products on where the CPU has AVX512-BF16 (elsewhere
/// a note, and fp32); returns what the products run in, for the start line.
inline void check_precision(const std::string& precision) {
  WEGEFT_CHECK(precision == "fp32" || precision == "bf16",
               "--precision must be fp32 or bf16, got '" << precision << "'");
}
inline std::string apply_precision(Transformer<float>& model, const std::string& precision) {
  check_precision(precision);
  if (precision == "fp32") return "fp32 products";
  if (!bf16_gemm_available()) {
    std::fprintf(stderr,
                 "wegeft: note: --precision bf16: this CPU has no AVX512-BF16; the products run "
                 "in fp32\n");
    return "fp32 products";
  }
  model.set_bf16_products(true);
  return "bf16 products (" + bf16_kernel_name() + ")";
}

/// A model from a Hugging Face folder or a GGUF file, with the tokenizer it came with.
struct LoadedTextModel {
  LoadedModel<float> loaded;
  std::optional<text::Tokenizer> tokenizer;
  Transformer<float>& model() { return *loaded.model; }
};

inline LoadedTextModel load_text_model(const std::string& path) {
  WEGEFT_CHECK(fs::exists(path), path << ": no such file or directory");
  LoadedTextModel m;
  if (fs::is_directory(path)) {
    m.loaded = load_hf_model<float>(path);
  } else {
    WEGEFT_CHECK(fs::path(path).extension() == ".gguf",
                 path << ": a model is a Hugging Face checkpoint folder or a .gguf file");
    m.loaded = load_gguf_model<float>(path);
  }
  // A bare BertModel checkpoint (sentence-transformers' MiniLM) gets the "bert." names a
  // BertForSequenceClassification has, so the adapter's module names are the ones PEFT uses when
  // it loads the same folder for classification.
  if (m.model().config().family == Family::bert && m.model().config().name_prefix().empty()) {
    ModelConfig c = m.model().config();
    c.prefix_set = false;
    c.prefix.clear();
    auto named = std::make_unique<Transformer<float>>(c);
    const std::string pre = c.name_prefix();
    for (const auto& [name, value] : m.model().tensors()) named->tensor(pre + name) = value;
    m.loaded.model = std::move(named);
  }
  m.tokenizer.emplace(text::Tokenizer::load(path));
  WEGEFT_CHECK(m.tokenizer->vocab_size() <= static_cast<std::size_t>(m.model().config().vocab_size),
               path << ": the tokenizer has " << m.tokenizer->vocab_size()
                    << " tokens, the model's embedding " << m.model().config().vocab_size);
  return m;
}

inline std::string hms(double s) {
  const long t = std::lround(s);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%02ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  return buf;
}

inline double peak_rss_gib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / (1024.0 * 1024.0);
}

inline double available_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  double kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024.0;
  return 0;
}

/// Rough bytes of activations and logits a step of `batch` x `seq` tokens keeps (float32).
inline double step_memory_estimate(const ModelConfig& c, Index batch, Index seq, Index classes) {
  const double tokens = static_cast<double>(batch) * static_cast<double>(seq);
  const double per_layer =
      14.0 * double(c.hidden) + 4.0 * double(c.intermediate) + 2.0 * double(c.heads) * double(seq);
  const double head = classes > 0 ? 0.0 : 3.0 * double(c.vocab_size);
  return 4.0 * tokens * (double(c.layers) * per_layer + head);
}

struct EvalResult {
  double loss = 0, accuracy = -1, macro_f1 = -1;  // the scores: classification only
  double exact_match = -1;                        // causal LM, when asked for
  std::size_t count = 0;                          // targets (LM) or examples (classification)
};

/// f(batch) for the batches of `data` in file order, batch_size examples each (the last may be
/// smaller), at most max_batches of them when max_batches > 0.
template <class F>
void for_each_batch(const text::Dataset& data, Task task, Index batch_size, std::int32_t pad,
                    std::int64_t max_batches, F&& f) {
  std::vector<std::size_t> order(data.examples.size());
  std::iota(order.begin(), order.end(), 0);
  std::int64_t batches = 0;
  for (std::size_t b = 0; b < order.size(); b += static_cast<std::size_t>(batch_size)) {
    if (max_batches > 0 && batches++ >= max_batches) break;
    const auto e = std::min(order.size(), b + static_cast<std::size_t>(batch_size));
    f(text::make_batch(data, order, b, e, task, pad));
  }
}

/// Appends the greedy exact match of each example of `batch` to `matches`: the targets against
/// greedy(cell), the most likely token at each target position (row-major batch x seq cell).
/// Returns how many are correct.
template <class G>
std::size_t judge_batch(const text::Batch& batch, G&& greedy, const text::StopRule& stops,
                        std::vector<text::ExactMatch>& matches) {
  std::size_t correct = 0;
  for (Index i = 0; i < batch.batch; ++i) {
    std::vector<std::int32_t> want, got;
    for (Index t = 0; t < batch.seq; ++t) {
      const auto cell = static_cast<std::size_t>(i * batch.seq + t);
      if (batch.targets[cell] == kIgnoreIndex) continue;
      want.push_back(batch.targets[cell]);
      got.push_back(greedy(cell));
    }
    matches.push_back(stops.judge(want, got));
    correct += matches.back().correct ? 1 : 0;
  }
  return correct;
}

/// What an evaluation sums over its batches, on either device: the loss weighted by targets (LM)
/// or examples (classification), the confusion of the predicted classes, the exact matches.
struct EvalTally {
  double total = 0;
  std::size_t count = 0, correct = 0;
  std::optional<Confusion> confusion;

  /// A causal-LM batch: its mean loss over `targets` counted targets.
  void add_lm(double mean_loss, std::size_t targets) {
    total += mean_loss * static_cast<double>(targets);
    count += targets;
  }
  /// A classification batch: its mean loss, and the argmax of each row of logits [batch, labels]
  /// against the batch's labels.
  template <class Logits>
  void add_classified(double mean_loss, const Logits& logits, const text::Batch& batch) {
    total += mean_loss * static_cast<double>(batch.batch);
    if (!confusion) confusion.emplace(logits.cols());
    for (Index i = 0; i < batch.batch; ++i) {
      Index arg = 0;
      logits.row(i).maxCoeff(&arg);
      confusion->add(batch.labels[static_cast<std::size_t>(i)], arg);
    }
    count += static_cast<std::size_t>(batch.batch);
  }
  /// The scores; exact match when `matches` were judged (their correct ones added to `correct`).
  EvalResult result(const std::vector<text::ExactMatch>* matches) const {
    EvalResult r;
    r.count = count;
    r.loss = count ? total / static_cast<double>(count) : std::nan("");
    if (confusion && confusion->total()) {
      r.accuracy = confusion->accuracy();
      r.macro_f1 = confusion->macro_f1();
    }
    if (matches && !matches->empty())
      r.exact_match = static_cast<double>(correct) / static_cast<double>(matches->size());
    return r;
  }
};

/// Mean loss (per target token, or per example) and, for classification, accuracy and macro F1.
/// With `matches` (causal LM), also each example's greedy exact match against `stops`.
inline EvalResult evaluate(Transformer<float>& model, const text::Dataset& data, Task task,
                           Index batch_size, std::int32_t pad, std::int64_t max_batches,
                           std::vector<text::ExactMatch>* matches = nullptr,
                           const text::StopRule* stops = nullptr) {
  model.set_training(false);
  const Index loss_chunk = model.lm_loss_chunk();
  if (matches) model.set_lm_loss_chunk(0);  // exact match reads the logits; a loss alone does not
  Transformer<float>::Activations acts;
  EvalTally tally;
  if (matches) matches->clear();
  WEGEFT_CHECK(!matches || stops, "evaluate: exact match needs a stop rule");
  for_each_batch(data, task, batch_size, pad, max_batches, [&](const text::Batch& batch) {
    const ModelInput<float> in{
        .ids = batch.ids.data(), .mask = batch.mask.data(), .batch = batch.batch, .seq = batch.seq};
    model.forward(acts, in);
    if (task == Task::causal_lm) {
      if (matches) {
        tally.correct += judge_batch(
            batch,
            [&](std::size_t cell) {
              Index arg = 0;
              acts.logits.row(static_cast<Index>(cell)).maxCoeff(&arg);
              return static_cast<std::int32_t>(arg);
            },
            *stops, *matches);
      }
      if (batch.target_count == 0) return;
      tally.add_lm(model.lm_loss(acts, batch.targets.data()), batch.target_count);
    } else {
      tally.add_classified(model.classification_loss(acts, batch.labels.data()), acts.logits,
                           batch);
    }
  });
  model.set_training(true);
  model.set_lm_loss_chunk(loss_chunk);
  return tally.result(matches);
}

inline MethodConfig method_from_options(const FinetuneOptions& o) {
  // LoRA and DoRA: alpha defaults to the rank (scale 1).
  auto lora_like = [&](auto c) -> MethodConfig {
    if (o.rank > 0) c.rank = o.rank;
    c.alpha = o.alpha > 0 ? o.alpha : double(c.rank);
    c.dropout = o.dropout;
    return c;
  };
  if (o.method == "lora") return lora_like(LoraConfig{});
  if (o.method == "dora") return lora_like(DoraConfig{});
  WEGEFT_CHECK(o.method == "wegeft",
               "--method must be wegeft, lora, dora or head, got '" << o.method << "'");
  WeGeFTConfig c;
  if (o.rank > 0) c.rank = o.rank;
  c.alpha = o.alpha > 0 ? o.alpha : 2.0 * double(c.rank);
  c.dropout = o.dropout;
  return c;
}

inline std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::size_t b = 0;
  while (b <= s.size()) {
    auto e = s.find(',', b);
    if (e == std::string::npos) e = s.size();
    if (e > b) out.push_back(s.substr(b, e - b));
    b = e + 1;
  }
  return out;
}

class Progress {
 public:
  Progress(const std::string& log_path, bool tty) : m_tty(tty) {
    if (!log_path.empty()) {
      m_log.open(log_path, std::ios::app);
      WEGEFT_CHECK(m_log.good(), log_path << ": cannot open the log file for writing");
    }
  }
  void report(std::int64_t step, std::int64_t total, double loss, std::optional<EvalResult> val,
              double lr, double tok_s, double elapsed, double train_s, bool force_line) {
    const double eta =
        step > 0 ? elapsed / double(step - m_first + (step == m_first)) * double(total - step) : 0;
    char line[320];
    int n = std::snprintf(line, sizeof line, "step %lld/%lld | loss %.4f",
                          static_cast<long long>(step), static_cast<long long>(total), loss);
    if (val) {
      n += std::snprintf(line + n, sizeof line - std::size_t(n), " | val loss %.4f", val->loss);
      if (val->accuracy >= 0)
        n += std::snprintf(line + n, sizeof line - std::size_t(n), " acc %.3f F1 %.3f",
                           val->accuracy, val->macro_f1);
    }
    n += std::snprintf(line + n, sizeof line - std::size_t(n),
                       " | lr %.2e | %.0f tok/s | %s elapsed, ETA %s | peak %.2f GiB", lr, tok_s,
                       hms(elapsed).c_str(), hms(eta).c_str(), peak_rss_gib());
    if (m_device_peak)
      std::snprintf(line + n, sizeof line - std::size_t(n), ", GPU %.2f GiB", m_device_peak());
    if (m_tty) {
      std::fprintf(stderr, "\r\033[K%s%s", line, force_line || val ? "\n" : "");
    } else if (force_line || val) {
      std::fprintf(stderr, "%s\n", line);
    }
    std::fflush(stderr);
    if (m_log.is_open()) {
      nlohmann::ordered_json j{{"step", step},
                               {"train_loss", loss},
                               {"lr", lr},
                               {"tokens_per_s", tok_s},
                               {"elapsed_s", elapsed},
                               {"train_s", train_s},
                               {"peak_gib", peak_rss_gib()}};
      if (m_device_peak) j["gpu_peak_gib"] = m_device_peak();
      if (val) {
        j["val_loss"] = val->loss;
        if (val->accuracy >= 0) {
          j["val_accuracy"] = val->accuracy;
          j["val_macro_f1"] = val->macro_f1;
        }
      }
      m_log << j.dump() << "\n";
      m_log.flush();
    }
  }
  void set_first(std::int64_t s) { m_first = s; }
  /// A GPU run's peak device memory in GiB, printed and logged (gpu_peak_gib) beside the host's.
  void set_device_peak(std::function<double()> f) { m_device_peak = std::move(f); }
  /// The log's first line of a run (or of a resumed part): what is trained and how.
  void start(const nlohmann::ordered_json& run) {
    if (!m_log.is_open()) return;
    m_log << run.dump() << "\n";
    m_log.flush();
  }

 private:
  bool m_tty;
  std::ofstream m_log;
  std::int64_t m_first = 0;
  std::function<double()> m_device_peak;
};

inline const char* kStateFile = "training_state.safetensors";
inline const char* kRunFile = "finetune.json";
inline const char* kLabelsFile = "labels.json";
inline const char* kHeadFile = "classifier.safetensors";

/// `--method head`: the classification head alone, under the names Hugging Face's
/// *ForSequenceClassification models give it ("classifier.weight"/".bias", or "score.weight").
inline void save_head(Transformer<float>& model, const std::string& dir) {
  const auto head = model.classifier_params();
  WEGEFT_CHECK(head, dir << ": the model has no classification head to save");
  const std::string name = detail::head_module(model.config());
  SafetensorsBuilder out;
  out.add(name + ".weight", DType::F32, Matrix<float>(model.store().value(head->first)));
  if (head->second)
    out.add(name + ".bias", DType::F32, Matrix<float>(model.store().value(*head->second)),
            {model.store().value(*head->second).size()});
  out.write((fs::path(dir) / kHeadFile).string(), {{"format", "wegeft-head"}});
}

/// Reads what save_head wrote into a new classification head of `model`.
inline void load_head(Transformer<float>& model, const std::string& dir) {
  const SafetensorsReader file((fs::path(dir) / kHeadFile).string());
  std::set<std::string> keys;
  const auto head =
      detail::read_head<float>(file, detail::head_module(model.config()), model.config(), keys);
  for (const auto& info : file.tensors())
    WEGEFT_CHECK(keys.count(info.name),
                 file.path() << ": tensor '" << info.name << "' is not part of the head");
  WEGEFT_CHECK(
      head.first.rows() >= 2,
      file.path() << ": a classification head needs at least 2 labels, has " << head.first.rows());
  detail::install_head(model, model.store(), head);
}

/// What the finetune loop needs from the GPU: one micro-batch (its mean loss; the optimizer
/// steps every `accumulation` calls, after clipping), the current learning rate, the validation
/// loss, the adapters' values and the optimizer's state copied into the host store and optimizer
/// (before saving a checkpoint), and the other way (after loading one, for --resume).
struct GpuBackend {
  std::function<double(const text::Batch&)> step;
  std::function<double()> lr;
  /// evaluate()'s scores on the GPU: a causal LM's loss (and exact match when matches and stops
  /// are given), a classifier's loss, accuracy and macro-F1.
  std::function<EvalResult(const text::Dataset&, Index, std::int32_t, std::int64_t,
                           std::vector<text::ExactMatch>*, const text::StopRule*)>
      validate;
  /// The next-token logits [1, vocab] after one sequence's last token (generate): decoded with a
  /// key/value cache, only the tokens past those of the last call when ids continues them.
  /// plan(batch, seq) sizes the GPU's buffers once for the largest batch to come.
  std::function<Matrix<float>(const std::vector<std::int32_t>&)> next_logits;
  std::function<void(Index, Index)> plan;
  std::function<void(AdamW<float>&)> to_host;
  std::function<void(const AdamW<float>&)> from_host;
  std::function<double()> peak_gib;  // the device memory wegeft::cuda has held at most, in GiB
  std::string description;
};

}  // namespace wegeft::tool

#ifdef WEGEFT_CUDA
#include "finetune_cuda.hpp"
#endif

namespace wegeft::tool {

inline int finetune(FinetuneOptions o) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  if (o.threads > 0) set_threads(o.threads);
  // Resuming: the run's own options come from finetune.json; the command line may only repeat them.
  const std::string run_file = (fs::path(o.out) / kRunFile).string();
  const auto given = to_json(o);  // the options as given, before defaults are filled in
  if (o.resume) {
    WEGEFT_CHECK(fs::exists(run_file) && fs::exists(fs::path(o.out) / kStateFile),
                 o.out << ": nothing to resume (no " << kRunFile << " and " << kStateFile << ")");
    const auto saved = detail::parse_json_strict(read_text_file(run_file), run_file);
    for (const auto& [k, v] : saved.items()) {
      // The device may change: a run saved on the GPU continues on the CPU, and the other way.
      if (!given.contains(k) || k == "iters" || k == "device") continue;
      const nlohmann::json now(given[k]);  // compared as the same json type as `saved`
      WEGEFT_CHECK(now == v, "--resume: option '" << k << "' was " << v.dump()
                                                  << " in the run being resumed, now "
                                                  << given[k].dump());
    }
  }
  auto tm = load_text_model(o.model);
  auto& model = tm.model();
  const auto& tok = *tm.tokenizer;
  const ModelConfig& cfg = model.config();
  const bool task_given = !o.task.empty();
  if (!task_given) o.task = cfg.causal() ? "causal-lm" : "classification";
  WEGEFT_CHECK(o.task == "causal-lm" || o.task == "classification",
               "--task must be causal-lm or classification, got '" << o.task << "'");
  const Task task = o.task == "causal-lm" ? Task::causal_lm : Task::classification;
  WEGEFT_CHECK(task == Task::classification || cfg.causal(),
               o.model << ": a " << to_string(cfg.family)
                       << " model has no language-model head; use --task classification");
  WEGEFT_CHECK(o.on_long == "truncate" || o.on_long == "error",
               "--on-long must be truncate or error, got '" << o.on_long << "'");
  WEGEFT_CHECK(o.batch_size >= 1 && o.grad_accum >= 1,
               "--batch-size and --grad-accum must be at least 1");
  WEGEFT_CHECK(o.max_seq_length >= 2, "--max-seq-length must be at least 2");
  WEGEFT_CHECK(o.device == "cpu" || o.device == "cuda",
               "--device must be cpu or cuda, got '" << o.device << "'");
#ifndef WEGEFT_CUDA
  WEGEFT_CHECK(o.device == "cpu",
               "--device cuda: this wegeft was built without the CUDA backend "
               "(configure with -DWEGEFT_ENABLE_CUDA=ON; scripts/build-cuda)");
#endif
  const bool on_gpu = o.device == "cuda";
  check_precision(o.precision);
  if (o.max_seq_length > static_cast<std::size_t>(cfg.max_positions)) {
    std::fprintf(stderr,
                 "wegeft: note: --max-seq-length %zu lowered to the model's %ld positions\n",
                 o.max_seq_length, static_cast<long>(cfg.max_positions));
    o.max_seq_length = static_cast<std::size_t>(cfg.max_positions);
  }

  text::DataOptions dopt{.task = task,
                         .max_seq_length = o.max_seq_length,
                         .mask_prompt = o.mask_prompt,
                         .truncate = o.on_long == "truncate",
                         .default_system = text::chat_default_system(tok.chat_template())};
  text::LabelMap labels;
  const std::string train_path = (fs::path(o.data) / "train.jsonl").string();
  const std::string valid_path = (fs::path(o.data) / "valid.jsonl").string();
  WEGEFT_CHECK(fs::is_directory(o.data),
               o.data << ": --data must be a folder holding train.jsonl (and valid.jsonl)");
  WEGEFT_CHECK(fs::exists(train_path), o.data << ": no train.jsonl");
  const auto train = text::read_dataset(train_path, tok, dopt, labels, true);
  std::optional<text::Dataset> valid;
  if (fs::exists(valid_path))
    valid.emplace(text::read_dataset(valid_path, tok, dopt, labels, false));
  if (task == Task::causal_lm && !task_given && train.labelled > 0)
    std::fprintf(stderr,
                 "wegeft: warning: %s: %zu records have a \"label\", which a causal-LM fine-tune "
                 "ignores (it learns their text); --task classification trains a classifier on "
                 "the labels\n",
                 train_path.c_str(), train.labelled);
  if (task == Task::classification)
    WEGEFT_CHECK(labels.names.size() >= 2, train_path
                                               << ": classification needs at least 2 labels, found "
                                               << labels.names.size());
  for (const text::Dataset* d :
       {&train, valid ? &*valid : static_cast<const text::Dataset*>(nullptr)})
    if (d && d->truncated)
      std::fprintf(stderr, "wegeft: warning: %s: %zu of %zu examples cut to %zu tokens\n",
                   d->path.c_str(), d->truncated, d->examples.size(), o.max_seq_length);

  // Steps: --iters wins; else --epochs (default 1) over the training examples.
  const auto n_train = static_cast<std::int64_t>(train.examples.size());
  const std::int64_t batches_per_epoch = (n_train + o.batch_size - 1) / o.batch_size;
  if (o.iters <= 0) {
    const double epochs = o.epochs > 0 ? o.epochs : 1.0;
    o.iters = std::max<std::int64_t>(
        1, static_cast<std::int64_t>(
               std::ceil(epochs * double(batches_per_epoch) / double(o.grad_accum))));
  }
  if (o.warmup < 0) o.warmup = o.iters / 20;
  if (o.eval_every <= 0) o.eval_every = std::max<std::int64_t>(1, o.iters / 10);
  if (o.save_every <= 0) o.save_every = o.eval_every;
  if (o.lr <= 0)
    o.lr = o.method == "wegeft" ? 5e-4 : 1e-3;  // docs/finetune.md: the sweep behind these

  // Memory: refuse a batch whose activations alone would not fit.
  std::size_t longest = 0;
  for (const auto& e : train.examples) longest = std::max(longest, e.ids.size());
  const double need = step_memory_estimate(cfg, o.batch_size, static_cast<Index>(longest),
                                           task == Task::classification ? 2 : 0);
  const double avail = available_memory_bytes();
  WEGEFT_CHECK(on_gpu || avail <= 0 || need < 0.9 * avail,
               "a batch of " << o.batch_size << " x " << longest << " tokens needs about "
                             << need / (1 << 30) << " GiB of activations, " << avail / (1 << 30)
                             << " GiB are available; lower --batch-size or --max-seq-length");

  // Adapters (and the classification head) in the model's store; --method head: the head alone.
  const bool head_only = o.method == "head";
  WEGEFT_CHECK(!head_only || task == Task::classification,
               "--method head trains a classification head alone; it needs --task classification");
  if (!head_only) {
    AdapterSpec spec;
    spec.target_modules = split_commas(o.targets);
    spec.method = method_from_options(o);
    spec.seed = o.seed;
    model.attach(spec);
  }
  if (task == Task::classification)
    model.add_classifier(static_cast<Index>(labels.names.size()), std::nullopt, o.seed + 1);
  model.set_training(true);
  // The LM head and loss fused over 256 rows at a time: no [tokens, vocab] logits in a step.
  if (task == Task::causal_lm) model.set_lm_loss_chunk(256);
  auto& store = model.store();
  const double frozen = double(model.frozen_parameter_count());
  const std::string precision = on_gpu ? "" : apply_precision(model, o.precision);

  TrainerConfig tc;
  tc.adamw = {.lr = o.lr, .weight_decay = o.weight_decay};
  tc.schedule = {o.schedule == "cosine"   ? ScheduleKind::cosine
                 : o.schedule == "linear" ? ScheduleKind::linear
                                          : ScheduleKind::constant,
                 o.warmup, o.iters};
  WEGEFT_CHECK(o.schedule == "cosine" || o.schedule == "linear" || o.schedule == "constant",
               "--schedule must be cosine, linear or constant, got '" << o.schedule << "'");
  tc.max_grad_norm = o.max_grad_norm;
  tc.accumulation = o.grad_accum;
  Trainer<float> trainer(model, tc);
  std::optional<GpuBackend> gpu;  // --device cuda: the step, validation and lr come from here
#ifdef WEGEFT_CUDA
  if (on_gpu) gpu = cuda_backend(model, tc);
#endif
  const std::string where =
      gpu ? gpu->description
          : std::to_string(gemm_threads()) + " threads (" + gemm_backend() + "), " + precision;
  auto current_lr = [&] { return gpu ? gpu->lr() : trainer.current_lr(); };
  auto validate = [&](const text::Dataset& d) {
    return gpu ? gpu->validate(d, o.batch_size, tok.pad_id().value_or(0), o.eval_batches, nullptr,
                               nullptr)
               : evaluate(model, d, task, o.batch_size, tok.pad_id().value_or(0), o.eval_batches);
  };

  std::int64_t start = 0;
  if (o.resume) {
    load_checkpoint((fs::path(o.out) / kStateFile).string(), model, store, trainer.optimizer());
    if (gpu) gpu->from_host(trainer.optimizer());
    start = trainer.optimizer_steps();
    WEGEFT_CHECK(start <= o.iters,
                 o.out << ": the saved run is at step " << start << ", past --iters " << o.iters);
  } else {
    fs::create_directories(o.out);
    write_file_atomic(run_file, given.dump(2) + "\n");
    if (task == Task::classification)
      write_file_atomic((fs::path(o.out) / kLabelsFile).string(),
                        nlohmann::json(labels.names).dump() + "\n");
  }
  std::fprintf(
      stderr,
      "wegeft finetune: %s %s (%s), %s, %.1fM frozen + %.3fM trainable parameters (%.3f%%)\n"
      "  data: %zu train / %zu valid examples, %zu train tokens; %lld steps of %ld x %ld; lr %.1e "
      "%s, warmup %lld; %s\n",
      to_string(cfg.family), o.method.c_str(), head_only ? "no adapter" : o.targets.c_str(),
      text::to_string(task), frozen / 1e6, double(store.parameter_count()) / 1e6,
      100.0 * double(store.parameter_count()) / frozen, train.examples.size(),
      valid ? valid->examples.size() : 0, train.tokens, static_cast<long long>(o.iters),
      static_cast<long>(o.batch_size), static_cast<long>(o.grad_accum), o.lr, o.schedule.c_str(),
      static_cast<long long>(o.warmup), where.c_str());

  const std::int32_t pad = tok.pad_id().value_or(0);
  Progress progress(o.log, ::isatty(2) != 0);
  progress.set_first(start);
  if (gpu) progress.set_device_peak(gpu->peak_gib);
  progress.start({{"event", "start"},
                  {"step", start},
                  {"method", o.method},
                  {"trainable_parameters", store.parameter_count()},
                  {"frozen_parameters", model.frozen_parameter_count()},
                  {"iters", o.iters},
                  {"lr", o.lr},
                  {"threads", gemm_threads()},
                  {"backend", gpu ? gpu->description : gemm_backend()},
                  {"device", o.device}});
  auto save = [&] {
    if (gpu) gpu->to_host(trainer.optimizer());  // the values and the optimizer's state
    if (head_only)
      save_head(model, o.out);
    else
      save_adapter(model, store, o.out, o.model);
    save_checkpoint((fs::path(o.out) / kStateFile).string(), model, store, trainer.optimizer());
  };
  // Batch k of the run is batch (k mod per-epoch) of epoch k / per-epoch, whose order is a
  // permutation drawn from the seed and the epoch alone: a resumed run sees the same batches.
  auto epoch_order = [&](std::int64_t epoch) {
    std::vector<std::size_t> order(train.examples.size());
    std::iota(order.begin(), order.end(), 0);
    Rng rng(o.seed * 1000003ULL + static_cast<std::uint64_t>(epoch) + 17);
    for (std::size_t i = order.size(); i > 1; --i)
      std::swap(order[i - 1], order[rng.next_u64() % i]);
    return order;
  };
  std::int64_t cached_epoch = -1;
  std::vector<std::size_t> order;
  // Each step is timed alone, so validation and adapter saves stay out of tokens/s and train_s.
  double window_loss = 0, window_tokens = 0, window_secs = 0;
  double train_total = 0;  // seconds in training steps (validation and saving left out)
  std::int64_t window_n = 0;
  std::optional<EvalResult> last_val;
  const std::int64_t end = o.stop_at > 0 ? std::min(o.stop_at, o.iters) : o.iters;
  for (std::int64_t step = start; step < end; ++step) {
    const auto step_t = clock::now();
    for (Index micro = 0; micro < o.grad_accum; ++micro) {
      const std::int64_t k = step * o.grad_accum + micro;
      const std::int64_t epoch = k / batches_per_epoch, within = k % batches_per_epoch;
      if (epoch != cached_epoch) order = epoch_order(epoch), cached_epoch = epoch;
      const auto b = static_cast<std::size_t>(within * o.batch_size);
      const auto e = std::min(order.size(), b + static_cast<std::size_t>(o.batch_size));
      const auto batch = text::make_batch(train, order, b, e, task, pad);
      const ModelInput<float> in{.ids = batch.ids.data(),
                                 .mask = batch.mask.data(),
                                 .batch = batch.batch,
                                 .seq = batch.seq};
      double loss;
      if (task == Task::causal_lm) {
        if (batch.target_count == 0) continue;
        loss = gpu ? gpu->step(batch) : trainer.lm_step(in, batch.targets.data());
      } else {
        loss = gpu ? gpu->step(batch) : trainer.classification_step(in, batch.labels.data());
      }
      WEGEFT_CHECK(std::isfinite(loss), "the training loss became " << loss << " at step "
                                                                    << step + 1 << "; lower --lr");
      window_loss += loss;
      ++window_n;
      for (auto m : batch.mask) window_tokens += m;
    }
    window_secs += std::chrono::duration<double>(clock::now() - step_t).count();
    const std::int64_t done = step + 1;
    const bool eval_now = valid && (done % o.eval_every == 0 || done == o.iters);
    if (eval_now) last_val = validate(*valid);
    if (done % o.report_every == 0 || eval_now || done == o.iters) {
      train_total += window_secs;
      const double elapsed = std::chrono::duration<double>(clock::now() - t0).count();
      progress.report(done, o.iters, window_n ? window_loss / double(window_n) : std::nan(""),
                      eval_now ? last_val : std::nullopt, current_lr(),
                      window_secs > 0 ? window_tokens / window_secs : 0, elapsed, train_total,
                      done == o.iters);
      window_loss = window_tokens = window_secs = 0;
      window_n = 0;
    }
    if (done % o.save_every == 0 || done == end) save();
  }
  if (start >= end) save();
  std::printf("%s: %s adapter after %lld of %lld steps%s\n", o.out.c_str(), o.method.c_str(),
              static_cast<long long>(end), static_cast<long long>(o.iters),
              last_val ? (", validation loss " + std::to_string(last_val->loss)).c_str() : "");
  return 0;
}

/// Loads MODEL and, if given, an adapter directory written by finetune (or PEFT).
inline LoadedTextModel load_adapted(const std::string& model_path, const std::string& adapter) {
  auto tm = load_text_model(model_path);
  // finetune --method head wrote the head alone (and no adapter_config.json).
  if (!adapter.empty() && !fs::exists(fs::path(adapter) / kAdapterConfigFile) &&
      fs::exists(fs::path(adapter) / kHeadFile))
    load_head(tm.model(), adapter);
  else if (!adapter.empty())
    load_adapter(tm.model(), tm.model().store(), adapter);
  tm.model().set_training(false);
  return tm;
}

/// eval's and generate's --device: nothing for the CPU; for "cuda", the model on GPU 0 in bf16
/// (a llama causal LM or a bert classifier, its adapters as loaded, or merged into the weights).
inline std::optional<GpuBackend> inference_device(Transformer<float>& model,
                                                  const std::string& device) {
  WEGEFT_CHECK(device == "cpu" || device == "cuda",
               "--device must be cpu or cuda, got '" << device << "'");
  if (device == "cpu") return std::nullopt;
#ifdef WEGEFT_CUDA
  return cuda_backend(model, TrainerConfig{});
#else
  (void)model;
  WEGEFT_CHECK(false,
               "--device cuda: this wegeft was built without the CUDA backend "
               "(configure with -DWEGEFT_ENABLE_CUDA=ON; scripts/build-cuda)");
  return std::nullopt;
#endif
}

inline int eval_command(const std::string& model_path, const std::string& adapter,
                        const std::string& data, const std::string& split, Index batch_size,
                        std::size_t max_seq_length, bool mask_prompt, int threads,
                        bool json = false, bool exact_match = false,
                        const std::string& predictions = "",
                        const std::vector<std::string>& stop_strings = {},
                        const std::string& precision = "fp32", bool merge = false,
                        const std::string& device = "cpu") {
  if (threads > 0) set_threads(threads);
  auto tm = load_adapted(model_path, adapter);
  auto& model = tm.model();
  if (merge) {  // W += the adapter's update in every adapted layer; the head stays as it is
    WEGEFT_CHECK(model.adapters() != nullptr && !model.adapters()->empty(),
                 "--merge: " << (adapter.empty() ? std::string("no --adapter given")
                                                 : adapter + " holds no adapter to merge (a head "
                                                             "alone is scored as it is)"));
    for (auto& m : model.modules())
      if (m.adapter) std::visit([](auto& a) { a.merge(); }, *m.adapter);
  }
  // Built after the merge: the GPU then uploads the merged weights as the frozen ones.
  std::optional<GpuBackend> gpu = inference_device(model, device);
  if (!gpu) apply_precision(model, precision);  // the GPU computes in bf16
  const Task task = model.has_classifier() ? Task::classification : Task::causal_lm;
  WEGEFT_CHECK(task == Task::classification || model.config().causal(),
               model_path << ": a " << to_string(model.config().family)
                          << " model without a classification adapter has nothing to score");
  WEGEFT_CHECK(
      !(exact_match || !predictions.empty() || !stop_strings.empty()) || task == Task::causal_lm,
      "--exact-match, --predictions and --stop score a causal LM's completions; "
          << (adapter.empty() ? model_path : adapter)
          << " is a classifier (its accuracy is printed without them)");
  text::LabelMap labels;
  if (task == Task::classification) {
    const std::string lp = (fs::path(adapter) / kLabelsFile).string();
    WEGEFT_CHECK(fs::exists(lp),
                 adapter << ": no " << kLabelsFile << " (the label names of the classifier)");
    const auto j = detail::parse_json_strict(read_text_file(lp), lp);
    for (const auto& n : detail::json_string_list(j, lp)) labels.add(n);
    const auto rows = model.store().value(model.classifier_params()->first).rows();
    WEGEFT_CHECK(static_cast<Index>(labels.names.size()) == rows,
                 lp << ": " << labels.names.size() << " labels for a classifier of " << rows);
  }
  std::string path = (fs::path(data) / (split + ".jsonl")).string();
  if (!fs::exists(path) && split == "test") path = (fs::path(data) / "valid.jsonl").string();
  // An adapter trained with --mask-prompt is scored on the tokens it was trained to produce.
  const std::string run_file = adapter.empty() ? "" : (fs::path(adapter) / kRunFile).string();
  if (!run_file.empty() && fs::exists(run_file))
    mask_prompt = mask_prompt ||
                  detail::json_bool(detail::parse_json_strict(read_text_file(run_file), run_file),
                                    "mask_prompt", false, run_file);
  text::DataOptions dopt{
      .task = task,
      .max_seq_length =
          std::min<std::size_t>(max_seq_length, std::size_t(model.config().max_positions)),
      .mask_prompt = mask_prompt,
      .default_system = text::chat_default_system(tm.tokenizer->chat_template())};
  exact_match = exact_match || !predictions.empty() || !stop_strings.empty();
  for (const auto& st : stop_strings) WEGEFT_CHECK(!st.empty(), "--stop: an empty stop string");
  if (exact_match) dopt.mask_prompt = true;  // the completions are what greedy decoding must give
  const auto ds = text::read_dataset(path, *tm.tokenizer, dopt, labels, false);
  if (exact_match) {
    const auto unprompted = std::count_if(ds.examples.begin(), ds.examples.end(),
                                          [](const text::Example& e) { return !e.prompted; });
    WEGEFT_CHECK(unprompted == 0,
                 path << ": " << unprompted
                      << " {\"text\"} record(s); exact match needs a prompt to continue from "
                         "({\"prompt\", \"completion\"} or {\"messages\"})");
    WEGEFT_CHECK(ds.truncated == 0,
                 path << ": " << ds.truncated << " example(s) longer than " << dopt.max_seq_length
                      << " tokens; exact match needs whole completions (raise --max-seq-length)");
  }
  std::vector<text::ExactMatch> matches;
  const text::StopRule stops = text::stop_rule(*tm.tokenizer, stop_strings);
  const std::int32_t pad = tm.tokenizer->pad_id().value_or(0);
  const auto r =
      gpu ? gpu->validate(ds, batch_size, pad, 0, exact_match ? &matches : nullptr, &stops)
          : evaluate(model, ds, task, batch_size, pad, 0, exact_match ? &matches : nullptr, &stops);
  const std::size_t correct = static_cast<std::size_t>(
      std::count_if(matches.begin(), matches.end(), [](const auto& m) { return m.correct; }));
  if (!predictions.empty()) {  // one JSON line per example, in the file's order
    std::string out;
    for (std::size_t i = 0; i < matches.size(); ++i) {
      const auto& ex = ds.examples[i];
      std::vector<std::int32_t> target;
      for (std::size_t t = 1; t < ex.ids.size(); ++t)
        if (ex.train[t]) target.push_back(ex.ids[t]);
      const nlohmann::ordered_json j{{"line", ds.lines[i]},
                                     {"exact_match", matches[i].correct},
                                     {"target", tm.tokenizer->decode(target, true)},
                                     {"greedy", tm.tokenizer->decode(matches[i].greedy, true)}};
      out += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    }
    write_file_atomic(predictions, out);
  }
  if (json) {  // one line for scripts
    nlohmann::ordered_json j{{"data", path}, {"examples", ds.examples.size()}, {"loss", r.loss}};
    if (merge) j["merged"] = true;
    if (task == Task::causal_lm) {
      j["target_tokens"] = r.count;
      j["perplexity"] = std::exp(r.loss);
      if (exact_match) {
        j["exact_match"] = r.exact_match;
        j["exact_matches"] = correct;
      }
    } else {
      j["accuracy"] = r.accuracy;
      j["macro_f1"] = r.macro_f1;
    }
    std::printf("%s\n", j.dump().c_str());
  } else if (task == Task::causal_lm) {
    std::printf("%s: %zu examples, %zu target tokens%s: loss %.6f, perplexity %.3f", path.c_str(),
                ds.examples.size(), r.count, dopt.mask_prompt ? " (prompts masked)" : "", r.loss,
                std::exp(r.loss));
    if (exact_match)
      std::printf(", exact match %.4f (%zu of %zu)", r.exact_match, correct, matches.size());
    std::printf("\n");
  } else {
    std::printf("%s: %zu examples: loss %.6f, accuracy %.4f, macro-F1 %.4f\n", path.c_str(),
                r.count, r.loss, r.accuracy, r.macro_f1);
  }
  return 0;
}

inline int generate_command(const std::string& model_path, const std::string& adapter,
                            const std::string& prompt, int max_tokens, double temperature,
                            double top_p, std::uint64_t seed, bool raw, int threads,
                            const std::vector<std::string>& stop_strings = {},
                            const std::string& precision = "fp32",
                            const std::string& device = "cpu") {
  if (threads > 0) set_threads(threads);
  auto tm = load_adapted(model_path, adapter);
  auto& model = tm.model();
  WEGEFT_CHECK(model.config().causal() && !model.has_classifier(),
               model_path << ": generation needs a causal language model");
  std::optional<GpuBackend> gpu = inference_device(model, device);
  if (!gpu) apply_precision(model, precision);  // the GPU computes in bf16
  const auto& tok = *tm.tokenizer;
  WEGEFT_CHECK(max_tokens >= 1 && temperature >= 0 && top_p > 0 && top_p <= 1,
               "--max-tokens must be >= 1, --temperature >= 0 and --top-p in (0, 1]");
  std::string text = prompt;
  if (!raw && tok.chatml()) {
    text = text::render_chatml({{"user", prompt}}, text::chat_default_system(tok.chat_template())) +
           "<|im_start|>assistant\n";
  }
  std::vector<std::int32_t> ids;
  if (tok.bpe() && tok.bpe()->config().add_bos && tok.bos_id()) ids.push_back(*tok.bos_id());
  for (auto t : tok.encode(text)) ids.push_back(t);
  WEGEFT_CHECK(!ids.empty(), "the prompt is empty");
  for (const auto& st : stop_strings) WEGEFT_CHECK(!st.empty(), "--stop: an empty stop string");
  const text::StopRule stops = text::stop_rule(tok, stop_strings);
  Rng rng(seed);
  // Both devices decode incrementally with a key/value cache: the prompt, then a token at a time.
  Transformer<float>::KvCache cache;
  std::vector<std::int32_t> out;
  std::string printed;
  if (gpu) gpu->plan(1, static_cast<Index>(ids.size()));  // the prompt's buffers, once
  Matrix<float> logits;
  for (int n = 0; n < max_tokens; ++n) {
    WEGEFT_CHECK(static_cast<Index>(ids.size()) <= model.config().max_positions,
                 "the text reached the model's " << model.config().max_positions << " positions");
    if (gpu) {
      logits = gpu->next_logits(ids);
    } else {  // the tokens the cache has not seen yet
      const Index seen = cache.length;
      model.decode(cache, ids.data() + seen, static_cast<Index>(ids.size()) - seen, logits);
    }
    const auto last = logits.row(0);
    std::int32_t next = 0;
    if (temperature == 0) {
      Index arg = 0;
      last.maxCoeff(&arg);
      next = static_cast<std::int32_t>(arg);
    } else {
      std::vector<std::pair<double, std::int32_t>> p(static_cast<std::size_t>(last.size()));
      const double mx = last.maxCoeff();
      double z = 0;
      for (Index v = 0; v < last.size(); ++v) {
        const double e = std::exp((double(last(v)) - mx) / temperature);
        p[static_cast<std::size_t>(v)] = {e, static_cast<std::int32_t>(v)};
        z += e;
      }
      std::sort(p.begin(), p.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
      double keep = 0;
      std::size_t k = 0;
      while (k < p.size() && keep < top_p * z) keep += p[k++].first;
      double u = rng.uniform() * keep;
      next = p[0].second;
      for (std::size_t i = 0; i < k; ++i) {
        u -= p[i].first;
        if (u <= 0) {
          next = p[i].second;
          break;
        }
      }
    }
    if (stops.is_token(next)) break;
    ids.push_back(next);
    out.push_back(next);
    const std::string now = tok.decode(out, true);
    if (!stop_strings.empty()) {  // printed at the end, cut at the first stop string
      if (stops.find(now) != std::string::npos) break;
      continue;
    }
    if (now.size() > printed.size() && now.compare(0, printed.size(), printed) == 0 &&
        now.find("\xEF\xBF\xBD", printed.size()) == std::string::npos) {
      std::fputs(now.c_str() + printed.size(), stdout);
      std::fflush(stdout);
      printed = now;
    }
  }
  std::string final_text = tok.decode(out, true);
  final_text = final_text.substr(0, stops.find(final_text));
  if (final_text.size() > printed.size()) std::fputs(final_text.c_str() + printed.size(), stdout);
  std::fputs("\n", stdout);
  return 0;
}

}  // namespace wegeft::tool
