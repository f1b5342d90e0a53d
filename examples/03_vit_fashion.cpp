// A small ViT on Fashion-MNIST (Debian's dataset-fashion-mnist, uncompressed IDX files), in two
// commands:
//
//   vit_fashion pretrain --data DIR --out BASE [--steps N --rounds R --batch B --lr LR --seed S]
//     pretrains the ViT inside the example on the first five classes (T-shirt/top, trouser,
//     pullover, dress, coat): every block linear is trained through a LoRA adapter of full rank
//     (r = hidden, so any update of a square or wider matrix can be expressed), with the norms and
//     a classification head; after each of R rounds the adapters are merged into the weights and
//     fresh ones start (ReLoRA-style rounds). The patch projection, class token and position
//     embeddings keep their random initialisation (the engine has no gradient for them). BASE is
//     written as a Hugging Face ViT checkpoint (config.json, model.safetensors).
//
//   vit_fashion finetune --base BASE --data DIR --method head|lora|wegeft [--rank R] --lr LR
//                        --seed S --steps N --out RUN [--targets all-linear] [--batch B]
//                        [--device cpu|cuda]
//     adapts the pretrained ViT to the other five classes (sandal, shirt, sneaker, bag, ankle
//     boot), never seen in pretraining, with a new head: head only, LoRA or WeGeFT (alpha = 2r).
//     Train: --train-size images of those classes from the training file (default 5000), valid:
//     1000 others from it, test: all 5000 of the test file. RUN gets log.jsonl (the wegeft
//     finetune --log records: train loss, validation loss / accuracy / macro-F1, time, peak
//     memory), test.json (accuracy, macro-F1 and loss of the adapted model, and the accuracy of the
//     model with the adapters merged into its weights), the adapter in PEFT's layout (head only:
//     head.safetensors), and for WeGeFT clusters.json: for the first --map-images test images,
//     the cluster each patch token joins in every block's q projection, argmax_j of
//     (x W^T) C[:, j] with C = W Phi^T (tools/study/vit_clusters.py draws them).
//     --device cuda (a build with wegeft::cuda: scripts/build-cuda) trains on the GPU in bf16
//     (cuda::SequenceClassifier, validation there too); the trained parameters then come back to
//     the host, which scores the test split, saves and merges as for a CPU run.
#include <wegeft/io/hf_model.hpp>
#include <wegeft/io/idx.hpp>
#include <wegeft/io/peft.hpp>
#include <wegeft/nn/model.hpp>
#include <wegeft/train/metrics.hpp>
#include <wegeft/train/trainer.hpp>
#include <wegeft/wegeft.hpp>
#ifdef WEGEFT_CUDA
#include <wegeft/cuda.hpp>
#endif

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <numeric>
#include <string>
#include <vector>

using namespace wegeft;
namespace fs = std::filesystem;

namespace {

constexpr Index kSide = 28, kPixels = kSide * kSide, kClasses = 5;
// Fashion-MNIST's pixel mean and standard deviation (of x / 255, training set).
constexpr float kMean = 0.2860f, kStd = 0.3530f;

struct Split {
  std::vector<float> images;  // [n, 1, 28, 28], normalised
  std::vector<std::int32_t> labels;
  Index size() const { return static_cast<Index>(labels.size()); }
};

/// Images of classes first..first+4 of one file pair ("train" or "t10k"), labels shifted to 0..4;
/// `keep(i)` picks among them by their order in the file.
template <class Keep>
Split read_split(const std::string& dir, const std::string& part, int first, Keep keep) {
  const IdxArray images = read_idx(dir + "/" + part + "-images-idx3-ubyte");
  const IdxArray labels = read_idx(dir + "/" + part + "-labels-idx1-ubyte");
  WEGEFT_CHECK(images.shape.size() == 3 && images.shape[1] == kSide && images.shape[2] == kSide,
               dir << "/" << part << "-images-idx3-ubyte: not [n, 28, 28] images");
  WEGEFT_CHECK(labels.shape.size() == 1 && labels.shape[0] == images.shape[0],
               dir << "/" << part << "-labels-idx1-ubyte: " << labels.shape[0] << " labels for "
                   << images.shape[0] << " images");
  Split s;
  Index seen = 0;
  for (Index i = 0; i < images.shape[0]; ++i) {
    const int label = labels.values[std::size_t(i)];
    WEGEFT_CHECK(label <= 9, dir << "/" << part << "-labels-idx1-ubyte: label " << label
                                 << " of image " << i << " is not 0-9");
    if (label < first || label >= first + kClasses) continue;
    if (!keep(seen++)) continue;
    for (Index p = 0; p < kPixels; ++p)
      s.images.push_back((float(images.values[std::size_t(i * kPixels + p)]) / 255.0f - kMean) /
                         kStd);
    s.labels.push_back(label - first);
  }
  return s;
}

ModelConfig vit_config() {
  ModelConfig c;
  c.family = Family::vit;
  c.image_size = kSide;
  c.patch_size = 4;
  c.channels = 1;
  c.hidden = 64;
  c.layers = 4;
  c.heads = 4;
  c.kv_heads = 4;
  c.intermediate = 128;
  c.norm_eps = 1e-12;
  c.max_positions = c.patches() + 1;
  return c;
}

double peak_rss_gib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / (1024.0 * 1024.0);
}

struct Scores {
  double loss = 0, accuracy = 0, macro_f1 = 0;
};

/// Adds each of the n rows' argmax of logits [n, classes] against labels [n] to conf.
void tally(Confusion& conf, const Matrix<float>& logits, const std::int32_t* labels, Index n) {
  for (Index i = 0; i < n; ++i) {
    Index pred = 0;
    logits.row(i).maxCoeff(&pred);
    conf.add(labels[i], pred);
  }
}

Scores evaluate(Transformer<float>& model, const Split& s) {
  model.set_training(false);
  Transformer<float>::Activations acts;
  Confusion conf(kClasses);
  double loss = 0;
  const Index chunk = 250;
  for (Index b = 0; b < s.size(); b += chunk) {
    const Index n = std::min(chunk, s.size() - b);
    model.forward(acts, {.images = s.images.data() + b * kPixels, .batch = n});
    loss += model.classification_loss(acts, s.labels.data() + b) * double(n);
    tally(conf, acts.logits, s.labels.data() + b, n);
  }
  model.set_training(true);
  return {loss / double(s.size()), conf.accuracy(), conf.macro_f1()};
}

/// Where the training runs: one optimizer step on a batch of images (returning its loss), the
/// learning rate of the next step (as Trainer::current_lr), the scores of a split, and `done`
/// after the last step (the trained parameters in the model's store).
struct Backend {
  std::function<double(const float* images, const std::int32_t* labels, Index batch)> step;
  std::function<double()> lr;
  std::function<Scores(const Split&)> evaluate;
  std::function<void()> done = [] {};
};

TrainerConfig trainer_config(double lr, Index steps) {
  return {.adamw = {.lr = lr, .weight_decay = 0.0},
          .schedule = {ScheduleKind::cosine, steps / 10, steps}};
}

Backend cpu_backend(Transformer<float>& model, double lr, Index steps) {
  auto trainer = std::make_shared<Trainer<float>>(model, trainer_config(lr, steps));
  return {.step =
              [trainer](const float* images, const std::int32_t* labels, Index batch) {
                return trainer->classification_step({.images = images, .batch = batch}, labels);
              },
          .lr = [trainer] { return trainer->current_lr(); },
          .evaluate = [&model](const Split& s) { return evaluate(model, s); }};
}

#ifdef WEGEFT_CUDA
/// The same step on the GPU: the model's frozen weights in bf16, the adapters and the head with
/// AdamW on the device, clipping at 1 and the cosine schedule as the CPU Trainer applies them.
Backend cuda_backend(Transformer<float>& model, double lr, Index steps) {
  struct State {
    cuda::Context ctx;
    cuda::SequenceClassifier cls;
    TrainerConfig tc;
    cuda::AdamW opt;
    double lr() const { return tc.adamw.lr * tc.schedule.multiplier(opt.steps()); }
    State(Transformer<float>& m, const TrainerConfig& c)
        : ctx(0), cls(ctx, m, DType::BF16), tc(c), opt(c.adamw) {}
  };
  WEGEFT_CHECK(cuda::device_count() > 0, "--device cuda: the CUDA driver reports no GPU");
  auto s = std::make_shared<State>(model, trainer_config(lr, steps));
  std::fprintf(stderr, "training on %s, bf16\n", s->ctx.description().c_str());
  return {.step =
              [s](const float* images, const std::int32_t* labels, Index batch) {
                const double loss =
                    s->cls.train_step({.labels = labels, .batch = batch, .images = images});
                if (s->tc.max_grad_norm > 0)
                  cuda::clip_grad_norm(s->ctx, s->cls.store(), s->tc.max_grad_norm);
                s->opt.step(s->ctx, s->cls.store(), s->lr());
                s->cls.store().zero_grad(s->ctx);
                s->cls.refresh();
                return loss;
              },
          .lr = [s] { return s->lr(); },
          .evaluate =
              [s](const Split& split) {
                Confusion conf(kClasses);
                double loss = 0;
                const Index chunk = 250;
                for (Index b = 0; b < split.size(); b += chunk) {
                  const Index n = std::min(chunk, split.size() - b);
                  loss += s->cls.eval_loss({.labels = split.labels.data() + b,
                                            .batch = n,
                                            .images = split.images.data() + b * kPixels}) *
                          double(n);
                  tally(conf, s->cls.logits(), split.labels.data() + b, n);
                }
                return Scores{loss / double(split.size()), conf.accuracy(), conf.macro_f1()};
              },
          .done = [s, &model] { s->cls.store().download(s->ctx, model.store()); }};
}
#endif

/// --device: cpu, or cuda in a build with wegeft::cuda.
void check_device(const std::string& device) {
#ifdef WEGEFT_CUDA
  WEGEFT_CHECK(device == "cpu" || device == "cuda",
               "--device must be cpu or cuda, got '" << device << "'");
#else
  WEGEFT_CHECK(device == "cpu",
               "--device must be cpu in this build (cuda needs one with "
               "wegeft::cuda: scripts/build-cuda), got '"
                   << device << "'");
#endif
}

Backend backend_for(const std::string& device, Transformer<float>& model, double lr, Index steps) {
#ifdef WEGEFT_CUDA
  if (device == "cuda") return cuda_backend(model, lr, steps);
#endif
  check_device(device);
  return cpu_backend(model, lr, steps);
}

/// Steps of shuffled mini-batches over `s` (a fresh permutation each pass), reporting every
/// `every` steps to `log` (wegeft finetune's --log records) with the validation scores.
void train(Backend& trainer, const ModelConfig& config, const Split& s, const Split& valid,
           Index steps, Index batch, Index every, std::uint64_t seed, std::ostream& log) {
  Rng rng(seed);
  std::vector<Index> order(static_cast<std::size_t>(s.size()));
  std::iota(order.begin(), order.end(), Index(0));
  std::vector<float> images(static_cast<std::size_t>(batch * kPixels));
  std::vector<std::int32_t> labels(static_cast<std::size_t>(batch));
  std::size_t next = order.size();
  double window = 0, train_s = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (Index step = 1; step <= steps; ++step) {
    for (Index i = 0; i < batch; ++i) {
      if (next == order.size()) {
        for (std::size_t k = order.size() - 1; k > 0; --k)
          std::swap(order[k], order[rng.next_u64() % (k + 1)]);
        next = 0;
      }
      const Index j = order[next++];
      std::copy_n(s.images.begin() + j * kPixels, kPixels, images.begin() + i * kPixels);
      labels[std::size_t(i)] = s.labels[std::size_t(j)];
    }
    const auto a = std::chrono::steady_clock::now();
    window += trainer.step(images.data(), labels.data(), batch);
    train_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
    if (step % every == 0 || step == steps) {
      const Index in_window = step % every == 0 ? every : step % every;
      const Scores v = trainer.evaluate(valid);
      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      nlohmann::ordered_json j{
          {"step", step},
          {"train_loss", window / double(in_window)},
          {"lr", trainer.lr()},
          {"tokens_per_s", double(step * batch * (config.patches() + 1)) / train_s},
          {"elapsed_s", elapsed},
          {"train_s", train_s},
          {"peak_gib", peak_rss_gib()},
          {"val_loss", v.loss},
          {"val_accuracy", v.accuracy},
          {"val_macro_f1", v.macro_f1}};
      log << j.dump() << "\n" << std::flush;
      std::fprintf(stderr, "step %lld/%lld | loss %.4f | val loss %.4f acc %.4f | %.1f s\n",
                   static_cast<long long>(step), static_cast<long long>(steps),
                   window / double(in_window), v.loss, v.accuracy, elapsed);
      window = 0;
    }
  }
}

/// Merges every adapter into its weight and copies trained norms back into the model's tensors.
void merge_into_base(Transformer<float>& model) {
  for (auto& m : model.modules())
    if (m.adapter) std::visit([](auto& a) { a.merge(); }, *m.adapter);
  ParameterStore<float>& store = model.store();
  for (std::size_t i = 0; i < store.entries().size(); ++i) {
    const std::string& name = store.entries()[i].name;
    if (model.tensors().count(name)) model.tensor(name) = store.value(ParamId{i});
  }
}

struct Args {
  std::map<std::string, std::string> kv;
  std::string get(const std::string& k, const std::string& fallback = "") const {
    const auto it = kv.find(k);
    if (it != kv.end()) return it->second;
    WEGEFT_CHECK(!fallback.empty(), "--" << k << " is required");
    return fallback;
  }
  double num(const std::string& k, const std::string& fallback = "") const {
    const std::string v = get(k, fallback);
    std::size_t used = 0;
    double x = 0;
    try {
      x = std::stod(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    WEGEFT_CHECK(used == v.size() && std::isfinite(x),
                 "--" << k << ": '" << v << "' is not a number");
    return x;
  }
  Index count(const std::string& k, const std::string& fallback = "") const {
    const double x = num(k, fallback);
    WEGEFT_CHECK(x >= 1 && x == std::floor(x) && x < 1e9,
                 "--" << k << ": " << get(k, fallback) << " is not a positive whole number");
    return static_cast<Index>(x);
  }
};

Args parse(int argc, char** argv, const std::vector<std::string>& known) {
  Args a;
  for (int i = 2; i < argc; i += 2) {
    const std::string k = argv[i];
    WEGEFT_CHECK(k.rfind("--", 0) == 0 && i + 1 < argc,
                 "expected --option value pairs, got '" << k << "'");
    WEGEFT_CHECK(std::find(known.begin(), known.end(), k.substr(2)) != known.end(),
                 "unknown option " << k);
    a.kv[k.substr(2)] = argv[i + 1];
  }
  return a;
}

int pretrain(const Args& a) {
  const std::string data = a.get("data"), out = a.get("out");
  const Index steps = a.count("steps", "600"), rounds = a.count("rounds", "2"),
              batch = a.count("batch", "64");
  const double lr = a.num("lr", "2e-3");
  const auto seed = static_cast<std::uint64_t>(a.count("seed", "1"));
  const Split train_set = read_split(data, "train", 0, [](Index) { return true; });
  const Split test_set = read_split(data, "t10k", 0, [](Index) { return true; });
  const ModelConfig c = vit_config();
  Transformer<float> base(c);
  Rng init(seed);
  base.init_random(init);
  // Matrices U(-sqrt(3 / fan_in), +sqrt(3 / fan_in)) (unit gain), embeddings U(-0.2, 0.2).
  for (const auto& [name, t] : base.tensors())
    if (name.ends_with(".weight") && t.rows() > 1) {
      const float b = std::sqrt(3.0f / float(t.cols()));
      for (Index i = 0; i < t.size(); ++i) base.tensor(name).data()[i] = init.uniform(-b, b);
    }
  fs::create_directories(out);
  std::ofstream log(out + "/pretrain.jsonl");
  std::printf(
      "pretraining a ViT (%lld layers, hidden %lld, %lld patches of %lld px) on %lld "
      "Fashion-MNIST images of classes 0-4: %lld rounds of %lld steps of %lld\n",
      static_cast<long long>(c.layers), static_cast<long long>(c.hidden),
      static_cast<long long>(c.patches()), static_cast<long long>(c.patch_size),
      static_cast<long long>(train_set.size()), static_cast<long long>(rounds),
      static_cast<long long>(steps), static_cast<long long>(batch));
  std::vector<float> head_w, head_b;
  for (Index r = 0; r < rounds; ++r) {
    Transformer<float> model(c);
    for (const auto& [name, t] : base.tensors()) model.tensor(name) = t;
    model.attach({.target_modules = {"all-linear"},
                  .method = LoraConfig{.rank = c.hidden, .alpha = double(c.hidden)}});
    model.train_norms(".*");
    model.add_classifier(kClasses, std::nullopt, seed + 100);
    const auto head = *model.classifier_params();
    if (!head_w.empty()) {  // the head carries over from round to round
      std::copy(head_w.begin(), head_w.end(), model.store().value(head.first).data());
      std::copy(head_b.begin(), head_b.end(), model.store().value(*head.second).data());
    }
    Backend cpu = cpu_backend(model, lr, steps);  // (trainable norms: the CPU only)
    train(cpu, model.config(), train_set, test_set, steps, batch, std::max<Index>(1, steps / 3),
          seed * 1000 + std::uint64_t(r), log);
    const auto w = model.store().value(head.first), b = model.store().value(*head.second);
    head_w.assign(w.data(), w.data() + w.size());
    head_b.assign(b.data(), b.data() + b.size());
    merge_into_base(model);
    for (const auto& [name, t] : model.tensors()) base.tensor(name) = t;
    if (r + 1 == rounds) {
      const Scores s = evaluate(model, test_set);  // merged weights: the base plus this head
      std::printf("pretrained: test accuracy %.4f, macro-F1 %.4f on classes 0-4 (%lld images)\n",
                  s.accuracy, s.macro_f1, static_cast<long long>(test_set.size()));
      std::ofstream(out + "/pretrain.json") << nlohmann::ordered_json{{"accuracy", s.accuracy},
                                                                      {"macro_f1", s.macro_f1},
                                                                      {"loss", s.loss}}
                                                   .dump()
                                            << "\n";
    }
  }
  save_hf_model(base, out);
  std::printf("wrote %s (config.json, model.safetensors)\n", out.c_str());
  return 0;
}

/// clusters.json: for each of the first `count` test images, its pixels and, per block, the
/// cluster argmax_j (x W_q^T) C[:, j] of each patch token, C = W_q Phi^T.
void write_clusters(Transformer<float>& model, const Split& test, Index count,
                    const std::string& path) {
  const ModelConfig& c = model.config();
  model.set_training(false);
  Transformer<float>::Activations acts;
  count = std::min(count, test.size());
  model.forward(acts, {.images = test.images.data(), .batch = count});
  const Index tokens = c.patches() + 1;
  nlohmann::ordered_json images = nlohmann::ordered_json::array();
  std::vector<std::vector<std::vector<int>>> clusters(static_cast<std::size_t>(count));
  for (Index l = 0; l < c.layers; ++l) {
    const std::string name = c.linear_name(l, LinearRole::q);
    auto* ad = model.adapter<WeGeFTAdapter<float>>(name);
    WEGEFT_CHECK(ad != nullptr, name << " has no WeGeFT adapter");
    const Matrix<float> cw = ad->projected_weight();         // [d_out, r]
    const Matrix<float> w = model.tensor(name + ".weight");  // [d_out, d_in]
    const Matrix<float> scores = acts.blocks[std::size_t(l)].h1 * w.transpose() * cw;  // [N, r]
    for (Index b = 0; b < count; ++b) {
      std::vector<int> per_patch;
      for (Index t = 1; t < tokens; ++t) {
        Index j = 0;
        scores.row(b * tokens + t).maxCoeff(&j);
        per_patch.push_back(static_cast<int>(j));
      }
      clusters[std::size_t(b)].push_back(std::move(per_patch));
    }
  }
  for (Index b = 0; b < count; ++b) {
    std::vector<int> px;  // 0-255, as in the file
    for (Index p = 0; p < kPixels; ++p)
      px.push_back(static_cast<int>(
          std::lround((test.images[std::size_t(b * kPixels + p)] * kStd + kMean) * 255.0f)));
    images.push_back(nlohmann::ordered_json{{"label", test.labels[std::size_t(b)]},
                                            {"pixels", px},
                                            {"clusters", clusters[std::size_t(b)]}});
  }
  model.set_training(true);
  const nlohmann::ordered_json j{
      {"image_size", c.image_size},
      {"patch_size", c.patch_size},
      {"rank", model.adapter<WeGeFTAdapter<float>>(c.linear_name(0, LinearRole::q))
                   ->projected_weight()
                   .cols()},
      {"module", "q"},
      {"classes", {"sandal", "shirt", "sneaker", "bag", "ankle boot"}},
      {"images", images}};
  write_file_atomic(path, j.dump() + "\n");
}

int finetune(const Args& a) {
  const std::string data = a.get("data"), out = a.get("out"), method = a.get("method");
  const Index steps = a.count("steps", "400"), batch = a.count("batch", "32"),
              train_size = a.count("train-size", "5000");
  const double lr = a.num("lr");
  const auto seed = static_cast<std::uint64_t>(a.num("seed", "0"));
  WEGEFT_CHECK(method == "head" || method == "lora" || method == "wegeft",
               "--method must be head, lora or wegeft, got '" << method << "'");
  const Index rank = method == "head" ? 0 : a.count("rank", "8");
  const std::string targets = a.get("targets", "all-linear"), device = a.get("device", "cpu");
  check_device(device);
  std::vector<std::string> target_list;
  for (std::size_t b = 0; b <= targets.size();) {
    const std::size_t e = std::min(targets.find(',', b), targets.size());
    if (e > b) target_list.push_back(targets.substr(b, e - b));
    b = e + 1;
  }
  // Classes 5-9: every 30th image of the training file validates, the first train_size others
  // train; the test file's are the test split.
  const Split valid = read_split(data, "train", 5, [](Index i) { return i % 30 == 0; });
  Index taken = 0;
  const Split train_set =
      read_split(data, "train", 5, [&](Index i) { return i % 30 != 0 && taken++ < train_size; });
  const Split test = read_split(data, "t10k", 5, [](Index) { return true; });
  auto loaded = load_hf_model<float>(a.get("base"));
  Transformer<float>& model = *loaded.model;
  ParameterStore<float>& store = model.store();
  if (method == "lora")
    model.attach({.target_modules = target_list,
                  .method = LoraConfig{.rank = rank, .alpha = 2.0 * double(rank)},
                  .seed = seed});
  if (method == "wegeft")
    model.attach({.target_modules = target_list,
                  .method = WeGeFTConfig{.rank = rank, .alpha = 2.0 * double(rank)},
                  .seed = seed});
  model.add_classifier(kClasses, std::nullopt, seed + 7);
  fs::create_directories(out);
  std::ofstream log(out + "/log.jsonl");
  log << nlohmann::ordered_json{{"event", "start"},
                                {"model", a.get("base")},
                                {"task", "fashion-mnist classes 5-9"},
                                {"method", method},
                                {"rank", rank},
                                {"alpha", 2 * rank},
                                {"targets", targets},
                                {"trainable_parameters", store.parameter_count()},
                                {"frozen_parameters", model.frozen_parameter_count()},
                                {"lr", lr},
                                {"seed", seed},
                                {"steps", steps},
                                {"batch", batch},
                                {"train_images", train_set.size()},
                                {"threads", gemm_threads()},
                                {"backend", gemm_backend()},
                                {"device", device}}
             .dump()
      << "\n";
  std::fprintf(stderr, "%s r %lld, %lld trainable parameters, lr %g, seed %llu\n", method.c_str(),
               static_cast<long long>(rank), static_cast<long long>(store.parameter_count()), lr,
               static_cast<unsigned long long>(seed));
  Backend trainer = backend_for(device, model, lr, steps);
  train(trainer, model.config(), train_set, valid, steps, batch, std::max<Index>(1, steps / 8),
        seed, log);
  trainer.done();
  const Scores s = evaluate(model, test);
  nlohmann::ordered_json result{
      {"accuracy", s.accuracy}, {"macro_f1", s.macro_f1}, {"loss", s.loss}};
  if (method == "head") {
    const auto head = *model.classifier_params();
    SafetensorsBuilder b;
    b.add("classifier.weight", DType::F32, Matrix<float>(store.value(head.first)));
    b.add("classifier.bias", DType::F32, Matrix<float>(store.value(*head.second)), {kClasses});
    b.write(out + "/head.safetensors");
  } else {
    save_adapter(model, store, out, a.get("base"));
    if (method == "wegeft")
      write_clusters(model, test, a.count("map-images", "8"), out + "/clusters.json");
    for (auto& m : model.modules())
      if (m.adapter) std::visit([](auto& ad) { ad.merge(); }, *m.adapter);
    const Scores merged = evaluate(model, test);
    result["merged_accuracy"] = merged.accuracy;
    result["merged_macro_f1"] = merged.macro_f1;
    result["merged_loss"] = merged.loss;
  }
  write_file_atomic(out + "/test.json", result.dump() + "\n");
  std::printf("%s\n", result.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  try {
    if (cmd == "pretrain")
      return pretrain(parse(argc, argv, {"data", "out", "steps", "rounds", "batch", "lr", "seed"}));
    if (cmd == "finetune")
      return finetune(parse(argc, argv,
                            {"base", "data", "method", "rank", "lr", "seed", "steps", "batch",
                             "out", "targets", "train-size", "map-images", "device"}));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vit_fashion: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr,
               "usage: %s pretrain --data DIR --out BASE [--steps N --rounds R --batch B --lr LR "
               "--seed S]\n       %s finetune --base BASE --data DIR --method head|lora|wegeft "
               "[--rank R] --lr LR [--seed S --steps N --batch B --targets T --train-size N "
               "--device cpu|cuda] --out RUN\n",
               argv[0], argv[0]);
  return 2;
}
