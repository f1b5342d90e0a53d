// Compiled by the C++ compiler against the installed wegeft::cuda: its headers name no CUDA type.
// Builds a LoRA layer's host side and, where a GPU is present, runs its step once.
#include <wegeft/cuda.hpp>

#include <cstdio>

int main() {
  const int devices = wegeft::cuda::device_count();
  std::printf("wegeft::cuda consumer: %d CUDA device(s)\n", devices);
  if (devices == 0) return 0;
  wegeft::Rng rng(1);
  wegeft::Matrix<float> w = wegeft::Matrix<float>::Constant(24, 16, 0.5f);
  wegeft::ParameterStore<float> store;
  wegeft::LoraAdapter<float> lora(store, wegeft::FrozenLinear<float>(w), {.rank = 4}, rng, "q");
  wegeft::cuda::Context ctx;
  wegeft::cuda::DeviceStore dev(ctx, store);
  wegeft::cuda::AdaptedLinear layer(ctx, dev, lora, wegeft::DType::BF16);
  wegeft::cuda::Tensor x(wegeft::DType::BF16, 8, layer.input_cols());
  wegeft::cuda::Tensor y(wegeft::DType::BF16, 8, 24);
  wegeft::cuda::fill(ctx, x.view(), 1.0f);
  layer.forward(ctx, y.view(), x.block(0, 0, 8, 16));
  // W = 0.5 everywhere, B = 0: every output is 16 * 0.5 = 8
  const float y00 = wegeft::cuda::download(ctx, y.view())(0, 0);
  std::printf("y[0, 0] = %g (expected 8)\n", y00);
  return y00 == 8.0f ? 0 : 1;
}
