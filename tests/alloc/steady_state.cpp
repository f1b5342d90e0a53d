// Heap allocations per steady-state training step, counted by interposing malloc: 2-layer Llama,
// GPT-2 and BERT models with LoRA, WeGeFT (both orders, with and without weight dropout) and DoRA
// on every block linear; forward + loss (LM, or classification with a new head and a padding mask
// for BERT) + backward + AdamW step, counted on the third of three steps of the same shape.
// Each checked configuration must allocate nothing; prints one line each and "N passed, N failed".
// With --wide it also reports (unchecked) a wider Llama whose dense products exceed Eigen's
// stack-allocation limit: Eigen's (or the BLAS's) GEMM then allocates its blocking buffers itself.
#include <atomic>
#include <cstdio>
#include <string>
#include <vector>

#include <wegeft/wegeft.hpp>

// Every heap allocation goes through malloc (operator new included, and Eigen's aligned
// allocations): the executable's own malloc family interposes glibc's and counts while asked to.
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);
}

namespace {
std::atomic<long> g_allocations{0};
std::atomic<bool> g_counting{false};
inline void count() {
  if (g_counting.load(std::memory_order_relaxed))
    g_allocations.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace

extern "C" {
void* malloc(std::size_t n) {
  count();
  return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t size) {
  count();
  return __libc_calloc(n, size);
}
void* realloc(void* p, std::size_t n) {
  count();
  return __libc_realloc(p, n);
}
void* aligned_alloc(std::size_t align, std::size_t n) {
  count();
  return __libc_memalign(align, n);
}
void* memalign(std::size_t align, std::size_t n) {
  count();
  return __libc_memalign(align, n);
}
int posix_memalign(void** out, std::size_t align, std::size_t n) {
  count();
  *out = __libc_memalign(align, n);
  return *out ? 0 : 12;  // ENOMEM
}
void free(void* p) {
  __libc_free(p);
}
}

using namespace wegeft;

namespace {

struct Case {
  const char* name;
  MethodConfig method;
  Family family = Family::llama;
  bool wide = false;
};

// Allocations of one steady-state step (the third of three identical-shape steps).
long allocations_per_step(const Case& c) {
  ModelConfig config = ModelConfig::tiny(c.family);
  if (c.wide) {
    config.hidden = 256;
    config.intermediate = 512;
    config.max_positions = 64;
  }
  Transformer<float> model(config);
  Rng rng(1);
  model.init_random(rng);
  model.attach({.target_modules = {"all-linear"}, .method = c.method, .seed = 2});
  const bool classify = c.family == Family::bert;
  if (classify) model.add_classifier(3);
  ParameterStore<float>& store = model.store();
  Rng values(3);
  for (auto& v : store.values()) v = static_cast<float>(values.uniform(-0.2, 0.2));
  AdamW<float> opt({.lr = 1e-3});
  const Index batch = c.wide ? 4 : 2, seq = c.wide ? 64 : 8;
  std::vector<std::int32_t> ids(batch * seq), targets(batch * seq), labels = {0, 2, 1, 1};
  std::vector<std::uint8_t> mask(batch * seq, 1);
  mask[seq - 1] = 0;  // one padded position
  for (auto& id : ids) id = static_cast<std::int32_t>(rng.next_u32() % 11);
  for (auto& t : targets) t = static_cast<std::int32_t>(rng.next_u32() % 11);
  Transformer<float>::Activations acts;
  long counted = 0;
  for (int step = 0; step < 3; ++step) {
    g_allocations = 0;
    g_counting = step == 2;
    model.forward(acts, {.ids = ids.data(), .mask = mask.data(), .batch = batch, .seq = seq});
    if (classify)
      model.classification_loss(acts, labels.data());
    else
      model.lm_loss(acts, targets.data());
    model.backward(acts);
    opt.step(store.values(), store.grads());
    store.zero_grad();
    g_counting = false;
    counted = g_allocations;
  }
  return counted;
}

}  // namespace

int main(int argc, char** argv) {
  const bool wide = argc > 1 && std::string(argv[1]) == "--wide";
  const std::vector<Case> cases = {
      {"LoRA r=4", LoraConfig{.rank = 4, .alpha = 8}},
      {"LoRA r=4 dropout 0.1", LoraConfig{.rank = 4, .alpha = 8, .dropout = 0.1}},
      {"WeGeFT r=4 weight side",
       WeGeFTConfig{.rank = 4, .alpha = 8, .order = WeGeFTOrder::weight_side}},
      {"WeGeFT r=4 input edit",
       WeGeFTConfig{.rank = 4, .alpha = 8, .order = WeGeFTOrder::input_edit}},
      {"WeGeFT r=4 dropout 0.1", WeGeFTConfig{.rank = 4, .alpha = 8, .dropout = 0.1}},
      {"DoRA r=4", DoraConfig{.rank = 4, .alpha = 8}},
      {"GPT-2 LoRA r=4", LoraConfig{.rank = 4, .alpha = 8}, Family::gpt2},
      {"GPT-2 WeGeFT r=4", WeGeFTConfig{.rank = 4, .alpha = 8}, Family::gpt2},
      {"BERT classifier LoRA r=4", LoraConfig{.rank = 4, .alpha = 8, .dropout = 0.1}, Family::bert},
      {"BERT classifier DoRA r=4", DoraConfig{.rank = 4, .alpha = 8}, Family::bert},
      {"wide Llama LoRA r=16", LoraConfig{.rank = 16, .alpha = 32}, Family::llama, true},
      {"wide Llama WeGeFT r=32", WeGeFTConfig{.rank = 32, .alpha = 64, .dropout = 0.1},
       Family::llama, true},
      {"wide Llama DoRA r=16", DoraConfig{.rank = 16, .alpha = 32}, Family::llama, true},
  };
  int passed = 0, failed = 0;
  for (const auto& c : cases) {
    if (c.wide && !wide) continue;
    const long n = allocations_per_step(c);
    std::printf("%-28s %5ld heap allocations per steady-state step%s\n", c.name, n,
                c.wide   ? " (reported, not checked)"
                : n == 0 ? ""
                         : "  FAILED");
    if (!c.wide) (n == 0 ? passed : failed) += 1;
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
