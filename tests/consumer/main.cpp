// A consumer of wegeft: attaches a fresh LoRA and a fresh WeGeFT adapter to a frozen layer and
// checks that both reproduce the layer (their updates start at zero), then that one training step
// moves the output. Built against wegeft::blas (CONSUMER_EXPECT_BLAS) it also checks that the
// dense products go through the BLAS; linked to wegeft::precompiled (CONSUMER_EXPECT_PRECOMPILED),
// that it takes the adapters from that library. Exit code 0 means the library was found, compiled and worked.
#include <wegeft/wegeft.hpp>

// Linked to wegeft::precompiled: the adapters below are only declared here (extern template) and
// come from the library, so this program links only if the library holds them.
#if defined(CONSUMER_EXPECT_PRECOMPILED) && !defined(WEGEFT_PRECOMPILED)
#error "wegeft::precompiled did not pass WEGEFT_PRECOMPILED on"
#endif

#include <cstdio>
#include <string>

int main() {
  wegeft::Rng rng(7);
  wegeft::Matrix<float> w(5, 6), x(4, 6);
  wegeft::fill_uniform(w, rng, -1.f, 1.f);
  wegeft::fill_uniform(x, rng, -1.f, 1.f);
  wegeft::Matrix<float> y_base(4, 5), y_lora(4, 5), y_wegeft(4, 5);
  wegeft::FrozenLinear<float> base(w);
  base.forward(y_base, x);

  wegeft::ParameterStore<float> store;
  wegeft::LoraAdapter<float> lora(store, base, {.rank = 2, .alpha = 4}, rng);
  wegeft::WeGeFTGenerator<float> gen(store, 6, {.rank = 2, .alpha = 4}, rng);
  wegeft::WeGeFTAdapter<float> wg(gen, base, rng);
  wegeft::LoraAdapter<float>::Cache lc;
  wegeft::WeGeFTAdapter<float>::Cache wc;
  lora.forward(y_lora, lc, x);
  wg.forward(y_wegeft, wc, x);
  if (y_lora != y_base || y_wegeft != y_base) {
    std::puts("fresh adapters changed the frozen layer's output");
    return 1;
  }
  lora.backward(lc, x, y_lora);
  wg.backward(wc, x, y_wegeft);
  const float g_b = store.grad(lora.id_B()).norm(), g_phi = store.grad(gen.id_phi()).norm();
  const std::string backend = wegeft::gemm_backend();
  std::printf("consumer ok: wegeft %s, %s, |dL/dB| = %g, |dL/dPhi| = %g\n", wegeft::version,
              backend.c_str(), g_b, g_phi);
#ifdef CONSUMER_EXPECT_BLAS
  if (backend.rfind("Eigen", 0) == 0) {
    std::puts("linked wegeft::blas but the products do not go through a BLAS");
    return 1;
  }
#endif
  return g_b > 0 && g_phi > 0 ? 0 : 1;
}
