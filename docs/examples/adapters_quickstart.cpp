// The adapter guide's example (docs/adapters.md): one frozen layer, a LoRA adapter and a WeGeFT
// adapter, a few steps of gradient descent on the flat parameter buffer, then merge.
#include <wegeft/wegeft.hpp>

#include <cstdio>

int main() {
  using wegeft::Matrix;
  wegeft::Rng rng(42);

  // A frozen layer: W [d_out = 32, d_in = 48], b [32]. The library only views them.
  Matrix<float> w(32, 48);
  wegeft::Vector<float> b(32);
  wegeft::fill_uniform(w, rng, -0.2f, 0.2f);
  b.setZero();
  wegeft::FrozenLinear<float> base(w, &b);

  // All trainable parameters live in one flat store.
  wegeft::ParameterStore<float> store;
  wegeft::LoraAdapter<float> lora(store, base, {.rank = 4, .alpha = 8}, rng, "lora");

  // A batch of N = 16 tokens and a target the layer should move towards.
  Matrix<float> x(16, 48), target(16, 32);
  wegeft::fill_uniform(x, rng, -1.f, 1.f);
  wegeft::fill_uniform(target, rng, -1.f, 1.f);

  Matrix<float> y(16, 32);
  wegeft::LoraAdapter<float>::Cache cache;
  for (int step = 0; step < 50; ++step) {
    lora.forward(y, cache, x);                     // y = x W^T + b + s (x A^T) B^T
    const Matrix<float> dy = (y - target) / 16.f;  // d(mean squared error / 2) / dy
    store.zero_grad();
    lora.backward(cache, x, dy);  // A.grad, B.grad += ...
    for (std::size_t i = 0; i < store.values().size(); ++i)
      store.values()[i] -= 0.05f * store.grads()[i];
    if (step % 10 == 0)
      std::printf("lora step %2d  loss %.5f\n", step, 0.5 * (y - target).squaredNorm() / 16);
  }

  // WeGeFT on the same layer, from a second store: the generator (Phi, Psi) could be shared by
  // any number of layers with d_in = 48.
  wegeft::ParameterStore<float> store2;
  wegeft::WeGeFTGenerator<float> gen(store2, 48, {.rank = 4, .alpha = 8}, rng, "q_proj");
  wegeft::WeGeFTAdapter<float> layer(gen, base, rng);
  wegeft::WeGeFTAdapter<float>::Cache wcache;
  for (int step = 0; step < 50; ++step) {
    layer.forward(y, wcache, x);
    const Matrix<float> dy = (y - target) / 16.f;
    store2.zero_grad();
    layer.backward(wcache, x, dy);
    for (std::size_t i = 0; i < store2.values().size(); ++i)
      store2.values()[i] -= 0.05f * store2.grads()[i];
    if (step % 10 == 0)
      std::printf("wegeft step %2d  loss %.5f  (%s order)\n", step,
                  0.5 * (y - target).squaredNorm() / 16, wegeft::to_string(wcache.order));
  }

  // Merge for inference: afterwards the plain layer computes the adapted output.
  Matrix<float> y_adapted(16, 32), y_merged(16, 32);
  layer.set_training(false);
  layer.forward(y_adapted, wcache, x);
  layer.merge();
  base.forward(y_merged, x);
  const float diff = (y_merged - y_adapted).cwiseAbs().maxCoeff();
  std::printf("trainable: lora %ld, wegeft %ld; merged vs adapted max diff %.2e\n",
              static_cast<long>(lora.parameter_count()), static_cast<long>(gen.parameter_count()),
              diff);
  layer.unmerge();
  return diff < 1e-4f ? 0 : 1;
}
