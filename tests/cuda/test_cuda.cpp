// The CUDA backend against independent host oracles: every op and layer product against the
// same quantity computed in double on the host from the same (dtype-rounded) inputs, on fresh
// random inputs of odd sizes; a short training run against the host backend's. Needs a GPU
// (scripts/test-cuda); tolerances are relative to the largest reference value (rel_diff):
//   F32 storage: 2e-5 (fp32 accumulation, no TF32);
//   BF16 storage: 1e-2 on outputs and input gradients (bf16 inputs are exact in the reference, so
//   what remains is the bf16 rounding of the results and of the rank-r intermediates u and g),
//   2e-2 on parameter gradients (sums over N of products of rounded intermediates).
#include "support_cuda.hpp"

#include <wegeft/optim/clip.hpp>

#include <algorithm>
#include <limits>
#include <utility>

namespace {

using wegeft::DType;
using wegeft::Index;
using wegeft::Matrix;
using wegeft::TensorView;
namespace cu = wegeft::cuda;
using wt::random_matrix;
using wt::rel_diff;

using namespace wt::cuda;  // context, rounded, d, kNaN, out_tol, grad_tol

}  // namespace

TEST_CASE("cuda gemm equals a double product for every transpose, dtype, bias and beta", "[cuda]") {
  auto& ctx = context();
  wegeft::Rng rng(11);
  const Index m = 37, n = 53, k = 29;
  for (DType in : {DType::F32, DType::BF16})
    for (DType out : {DType::F32, DType::BF16}) {
      if (in == DType::F32 && out == DType::BF16) continue;  // refused, checked below
      for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb)
          for (int with_bias = 0; with_bias < 2; ++with_bias)
            for (float beta : {0.0f, 1.0f}) {
              const Matrix<float> a = rounded(
                  ta ? random_matrix<float>(k, m, rng) : random_matrix<float>(m, k, rng), in);
              const Matrix<float> b = rounded(
                  tb ? random_matrix<float>(n, k, rng) : random_matrix<float>(k, n, rng), in);
              const Matrix<float> c0 = rounded(random_matrix<float>(m, n, rng), out);
              const Matrix<float> bias = rounded(random_matrix<float>(1, n, rng), out);
              // odd row strides: the views are blocks of wider tensors
              auto ad = cu::Tensor::from_host(ctx, a, in, a.cols() + 3);
              auto bd = cu::Tensor::from_host(ctx, b, in, b.cols() + 5);
              cu::Tensor cd(out, m, n, n + 7);
              if (beta == 0.0f)
                cu::fill(ctx, cd.view(), kNaN);  // never read with beta = 0
              else
                cu::upload(ctx, cd.view(), c0);
              auto biasd = cu::Tensor::from_host(ctx, bias, out);
              const TensorView bv = biasd.view();
              const float alpha = 0.75f;
              cu::gemm(ctx, cd.view(), ad.view(), ta ? cu::Op::T : cu::Op::N, bd.view(),
                       tb ? cu::Op::T : cu::Op::N, alpha, beta, with_bias ? &bv : nullptr);
              Matrix<double> ref =
                  alpha * (ta ? d(a).transpose() : d(a)) * (tb ? d(b).transpose() : d(b));
              if (beta != 0.0f) ref += d(c0);
              if (with_bias) ref.rowwise() += d(bias).row(0);
              const Matrix<float> got = cu::download(ctx, cd.view());
              INFO("in " << wegeft::dtype_name(in) << " out " << wegeft::dtype_name(out) << " ta "
                         << ta << " tb " << tb << " bias " << with_bias << " beta " << beta);
              REQUIRE(got.allFinite());
              CHECK(rel_diff(d(got), ref) < out_tol(out));
            }
    }
  cu::Tensor a32(DType::F32, 4, 4), c16(DType::BF16, 4, 4);
  CHECK_THROWS_WITH(cu::gemm(ctx, c16.view(), a32.view(), cu::Op::N, a32.view(), cu::Op::N, 1, 0),
                    Catch::Contains("F32 inputs into a BF16 output"));
  cu::Tensor c32(DType::F32, 4, 5);
  CHECK_THROWS_WITH(cu::gemm(ctx, c32.view(), a32.view(), cu::Op::N, a32.view(), cu::Op::N, 1, 0),
                    Catch::Contains("gemm shapes disagree"));
}

TEST_CASE("cuda rank_r_product equals a double product on its kernel's shapes and on gemm's",
          "[cuda]") {
  auto& ctx = context();
  wegeft::Rng rng(12);
  struct Case {
    Index n, k, r, x_pad, w_pad;
  };
  // the kernel's shapes (r 8..32, k a multiple of 8, aligned rows of x; w aligned or not, which
  // picks its 16-byte or its one-value loads of w^T), row counts not a multiple of 16, up to its
  // most rows; then shapes left to gemm: one row more, r 12 and 40, k 37, x's rows not 16-byte
  // aligned
  const Index most = cu::kRankRKernelRows;
  const Case cases[] = {{1, 8, 8, 8, 8},          {37, 40, 8, 8, 8},       {37, 40, 16, 8, 1},
                        {37, 776, 24, 8, 8},      {70, 776, 32, 0, 3},     {most, 40, 8, 8, 8},
                        {most - 5, 40, 32, 8, 5}, {most + 1, 40, 8, 8, 8}, {33, 40, 12, 8, 8},
                        {33, 40, 40, 8, 8},       {33, 37, 8, 8, 8},       {33, 40, 8, 3, 8}};
  for (const Case& c : cases)
    for (const cu::Op op : {cu::Op::N, cu::Op::T}) {
      const bool t = op == cu::Op::T;
      const Matrix<float> x = rounded(random_matrix<float>(c.n, c.k, rng), DType::BF16);
      const Matrix<float> w =
          rounded(t ? random_matrix<float>(c.r, c.k, rng) : random_matrix<float>(c.k, c.r, rng),
                  DType::BF16);
      auto xd = cu::Tensor::from_host(ctx, x, DType::BF16, c.k + c.x_pad);
      auto wd = cu::Tensor::from_host(ctx, w, DType::BF16, w.cols() + c.w_pad);
      cu::Tensor out(DType::BF16, c.n, c.r + 6);  // 6 poisoned columns that must stay so
      cu::fill(ctx, out.view(), kNaN);
      cu::rank_r_product(ctx, out.block(0, 0, c.n, c.r), xd.view(), wd.view(), op);
      const Matrix<double> ref = d(x) * (t ? d(w).transpose() : d(w));
      const Matrix<float> got = cu::download(ctx, out.view());
      INFO("n " << c.n << " k " << c.k << " r " << c.r << " x pad " << c.x_pad << " w pad "
                << c.w_pad << (t ? " w^T" : " w"));
      REQUIRE(got.leftCols(c.r).allFinite());
      CHECK(rel_diff(d(got.leftCols(c.r)), ref) < out_tol(DType::BF16));
      CHECK(got.rightCols(6).array().isNaN().all());
    }
  cu::Tensor x(DType::BF16, 4, 16), w(DType::BF16, 8, 16), out(DType::BF16, 4, 8);
  CHECK_THROWS_WITH(cu::rank_r_product(ctx, out.view(), x.view(), w.view(), cu::Op::N),
                    Catch::Contains("rank_r_product shapes disagree"));
}

TEST_CASE("cuda device memory counters follow every allocation, move and release", "[cuda]") {
  auto& ctx = context();  // its workspaces are counted already
  const std::size_t before = cu::device_bytes_in_use();
  CHECK(before >= std::size_t(32) << 20);
  cu::reset_peak_device_bytes();
  CHECK(cu::peak_device_bytes() == before);
  const std::size_t calls = cu::device_allocations();
  {
    cu::Buffer a(12345);
    CHECK(cu::device_bytes_in_use() == before + 12345);
    CHECK(cu::device_allocations() == calls + 1);
    cu::Tensor t(DType::BF16, 10, 7);  // 140 bytes
    CHECK(cu::device_bytes_in_use() == before + 12345 + 140);
    cu::Buffer b(std::move(a));  // a move holds the same memory, counted once
    CHECK(cu::device_bytes_in_use() == before + 12345 + 140);
    cu::Buffer c(1000);
    c = std::move(b);  // c's 1000 bytes are released
    CHECK(cu::device_bytes_in_use() == before + 12345 + 140);
    CHECK(cu::peak_device_bytes() == before + 12345 + 140 + 1000);
    CHECK(cu::device_allocations() == calls + 3);  // a, t and c; the moves allocate nothing
  }
  CHECK(cu::device_bytes_in_use() == before);
  CHECK(cu::peak_device_bytes() == before + 12345 + 140 + 1000);
  cu::reset_peak_device_bytes();
  CHECK(cu::peak_device_bytes() == before);
  (void)ctx;
}

TEST_CASE("cuda scale_copy converts and scales a strided block and writes nothing else", "[cuda]") {
  auto& ctx = context();
  wegeft::Rng rng(12);
  for (DType from : {DType::F32, DType::BF16})
    for (DType to : {DType::F32, DType::BF16}) {
      const Matrix<float> src = rounded(random_matrix<float>(19, 23, rng), from);
      auto sd = cu::Tensor::from_host(ctx, src, from, 31);
      cu::Tensor dd(to, 25, 40);
      cu::fill(ctx, dd.view(), 7.0f);
      cu::scale_copy(ctx, dd.block(3, 5, 19, 23), sd.view(), -1.5f);
      const Matrix<float> got = cu::download(ctx, dd.view());
      // the product in float (as the kernel forms it), then stored in the destination's dtype
      Matrix<float> want = Matrix<float>::Constant(25, 40, 7.0f);
      want.block(3, 5, 19, 23) = -1.5f * src;
      CHECK(rel_diff(got, rounded(want, to)) == 0.0);
    }
}

TEST_CASE("cuda adamw_update follows the host AdamW step for step", "[cuda]") {
  auto& ctx = context();
  wegeft::Rng rng(13);
  const Index n = 1003;  // not a multiple of 4: the vector loop and the tail both run
  const wegeft::AdamWConfig config{.lr = 3e-3, .weight_decay = 0.05};
  wegeft::ParameterStore<float> host;
  const auto id = host.add("p", 1, n);
  auto hv = host.value(id);
  wegeft::fill_uniform(hv, rng, -1.0f, 1.0f);
  cu::DeviceStore dev(ctx, host);
  wegeft::AdamW<float> host_opt(config);
  cu::AdamW dev_opt(config);
  for (int step = 0; step < 5; ++step) {
    const Matrix<float> g = random_matrix<float>(1, n, rng);
    host.grad(id) = g;
    cu::upload(ctx, dev.grad(id), g);
    host_opt.step(host.values(), host.grads());
    dev_opt.step(ctx, dev);
  }
  const Matrix<float> got = cu::download(ctx, dev.value(id));
  CHECK(rel_diff(d(got), d(host.value(id))) < 1e-6);
  CHECK(dev_opt.steps() == 5);
}

namespace {

struct LayerData {
  Matrix<float> w, x, dy;
  wegeft::Vector<float> b;
};

LayerData layer_data(Index n, Index d_in, Index d_out, DType dtype, wegeft::Rng& rng) {
  LayerData l;
  l.w = rounded(random_matrix<float>(d_out, d_in, rng), dtype);
  l.x = rounded(random_matrix<float>(n, d_in, rng), dtype);
  l.dy = rounded(random_matrix<float>(n, d_out, rng), dtype);
  l.b = rounded(random_matrix<float>(1, d_out, rng), dtype).row(0).transpose();
  return l;
}

/// A device buffer [rows, cols] with `spare` NaN-poisoned columns after them, holding `m`.
cu::Tensor with_spare(cu::Context& ctx, const Matrix<float>& m, DType dtype, Index spare) {
  cu::Tensor t(dtype, m.rows(), m.cols() + spare);
  cu::fill(ctx, t.view(), kNaN);
  cu::upload(ctx, t.block(0, 0, m.rows(), m.cols()), m);
  return t;
}

/// A layer step's y and dx, finite and within out_tol of their double references.
void check_outputs(cu::Context& ctx, const TensorView& y, const Matrix<double>& y_ref,
                   const TensorView& dx, const Matrix<double>& dx_ref, DType dtype) {
  const Matrix<float> y_got = cu::download(ctx, y), dx_got = cu::download(ctx, dx);
  REQUIRE(y_got.allFinite());
  REQUIRE(dx_got.allFinite());
  CHECK(rel_diff(d(y_got), y_ref) < out_tol(dtype));
  CHECK(rel_diff(d(dx_got), dx_ref) < out_tol(dtype));
}

}  // namespace

TEST_CASE("cuda LoRA layer step equals the double formula on the host (F32 and BF16)", "[cuda]") {
  auto& ctx = context();
  wegeft::Rng rng(14);
  const Index n = 67, r = 5;
  // odd widths (the rank-r products through gemm) and widths of 8 k (through their own kernel)
  for (const auto& [d_in, d_out] : {std::pair<Index, Index>{45, 38}, {48, 40}})
    for (DType dtype : {DType::F32, DType::BF16}) {
      LayerData l = layer_data(n, d_in, d_out, dtype, rng);
      wegeft::ParameterStore<float> store;
      wegeft::LoraAdapter<float> lora(store, wegeft::FrozenLinear<float>(l.w, &l.b),
                                      {.rank = r, .alpha = 11.0}, rng, "q");
      lora.lora_B() = random_matrix<float>(d_out, r, rng);  // B = 0 would hide the adapter's term
      lora.lora_A() = rounded(lora.lora_A(), dtype);
      lora.lora_B() = rounded(lora.lora_B(), dtype);
      // the device holds s B in the weight's dtype: make s B exact there too
      const double s = lora.scale();
      cu::DeviceStore dev(ctx, store);
      cu::AdaptedLinear layer(ctx, dev, lora, dtype);
      REQUIRE(layer.padded_rank() == 8);

      auto x = with_spare(ctx, l.x, dtype, layer.padded_rank());
      auto dy = with_spare(ctx, l.dy, dtype, layer.padded_rank());
      cu::Tensor y(dtype, n, d_out), dx(dtype, n, d_in);
      cu::fill(ctx, y.view(), kNaN);
      cu::fill(ctx, dx.view(), kNaN);
      const auto cache = layer.forward(ctx, y.view(), x.block(0, 0, n, d_in));
      layer.backward(ctx, dx.view(), cache, dy.block(0, 0, n, d_out));

      const Matrix<double> A = d(lora.lora_A()), B = d(lora.lora_B());
      const Matrix<double> sB = d(rounded((s * B).cast<float>(), dtype));
      const Matrix<double> X = d(l.x), W = d(l.w), G = d(l.dy);
      const Matrix<double> u = X * A.transpose();
      Matrix<double> y_ref = X * W.transpose() + u * sB.transpose();
      y_ref.rowwise() += d(l.b).transpose().row(0);
      const Matrix<double> g = G * sB;
      const Matrix<double> dx_ref = G * W + g * A;
      const Matrix<double> dA_ref = g.transpose() * X;
      const Matrix<double> dB_ref = s * G.transpose() * u;

      INFO(wegeft::dtype_name(dtype) << " d_in " << d_in << " d_out " << d_out);
      check_outputs(ctx, y.view(), y_ref, dx.view(), dx_ref, dtype);
      CHECK(rel_diff(d(cu::download(ctx, dev.grad(lora.id_A()))), dA_ref) < grad_tol(dtype));
      CHECK(rel_diff(d(cu::download(ctx, dev.grad(lora.id_B()))), dB_ref) < grad_tol(dtype));

      // a second backward accumulates (+=) into the parameter gradients
      layer.backward(ctx, dx.view(), cache, dy.block(0, 0, n, d_out));
      CHECK(rel_diff(d(cu::download(ctx, dev.grad(lora.id_B()))), 2.0 * dB_ref) < grad_tol(dtype));

      // the step captured as a CUDA graph (both lanes) and replayed: the same products again
      cu::fill(ctx, y.view(), kNaN);
      cu::fill(ctx, dx.view(), kNaN);
      cu::Graph graph(ctx, [&] {
        const auto c = layer.forward(ctx, y.view(), x.block(0, 0, n, d_in));
        layer.backward(ctx, dx.view(), c, dy.block(0, 0, n, d_out));
      });
      graph.launch(ctx);
      CHECK(rel_diff(d(cu::download(ctx, y.view())), y_ref) < out_tol(dtype));
      CHECK(rel_diff(d(cu::download(ctx, dx.view())), dx_ref) < out_tol(dtype));
      CHECK(rel_diff(d(cu::download(ctx, dev.grad(lora.id_A()))), 3.0 * dA_ref) < grad_tol(dtype));
      CHECK(rel_diff(d(cu::download(ctx, dev.grad(lora.id_B()))), 3.0 * dB_ref) < grad_tol(dtype));
    }
}

TEST_CASE("cuda WeGeFT layers sharing a generator equal the double formula, gradients summed",
          "[cuda]") {
  auto& ctx = context();
  wegeft::Rng rng(15);
  const Index n = 53, d_in = 45, r = 6;
  const Index d_outs[2] = {38, 29};  // one generator, layers of different d_out
  for (DType dtype : {DType::F32, DType::BF16}) {
    LayerData l[2] = {layer_data(n, d_in, d_outs[0], dtype, rng),
                      layer_data(n, d_in, d_outs[1], dtype, rng)};
    wegeft::ParameterStore<float> store;
    wegeft::WeGeFTGenerator<float> gen(store, d_in, {.rank = r, .alpha = 9.0}, rng, "q");
    gen.phi() = rounded(random_matrix<float>(r, d_in, rng), dtype);
    gen.psi() = rounded(gen.psi(), dtype);
    wegeft::WeGeFTAdapter<float> a0(gen, wegeft::FrozenLinear<float>(l[0].w, &l[0].b), rng);
    wegeft::WeGeFTAdapter<float> a1(gen, wegeft::FrozenLinear<float>(l[1].w, &l[1].b), rng);
    const double s = gen.scale();
    cu::DeviceStore dev(ctx, store);
    cu::AdaptedLinear layers[2] = {cu::AdaptedLinear(ctx, dev, a0, dtype),
                                   cu::AdaptedLinear(ctx, dev, a1, dtype)};
    const Matrix<double> Phi = d(gen.phi()), Psi = d(gen.psi());
    Matrix<double> dPhi_ref = Matrix<double>::Zero(r, d_in), dPsi_ref = dPhi_ref;
    for (int i = 0; i < 2; ++i) {
      const Index d_out = d_outs[i];
      auto& layer = layers[i];
      auto x = with_spare(ctx, l[i].x, dtype, layer.padded_rank());
      auto dy = with_spare(ctx, l[i].dy, dtype, layer.padded_rank());
      cu::Tensor y(dtype, n, d_out), dx(dtype, n, d_in);
      cu::fill(ctx, y.view(), kNaN);
      cu::fill(ctx, dx.view(), kNaN);
      const auto cache = layer.forward(ctx, y.view(), x.block(0, 0, n, d_in));
      layer.backward(ctx, dx.view(), cache, dy.block(0, 0, n, d_out));

      const Matrix<double> X = d(l[i].x), W = d(l[i].w), G = d(l[i].dy);
      // the device holds s W Phi^T in the weight's dtype
      const Matrix<double> sP = d(rounded((s * W * Phi.transpose()).cast<float>(), dtype));
      const Matrix<double> u = X * Psi.transpose();
      Matrix<double> y_ref = X * W.transpose() + u * sP.transpose();
      y_ref.rowwise() += d(l[i].b).transpose().row(0);
      const Matrix<double> g = G * sP;
      const Matrix<double> dx_ref = G * W + g * Psi;
      dPsi_ref += g.transpose() * X;
      dPhi_ref += s * u.transpose() * G * W;
      INFO(wegeft::dtype_name(dtype) << " layer " << i);
      check_outputs(ctx, y.view(), y_ref, dx.view(), dx_ref, dtype);
    }
    INFO(wegeft::dtype_name(dtype));
    CHECK(rel_diff(d(cu::download(ctx, dev.grad(gen.id_psi()))), dPsi_ref) < grad_tol(dtype));
    CHECK(rel_diff(d(cu::download(ctx, dev.grad(gen.id_phi()))), dPhi_ref) < grad_tol(dtype));
  }
}

TEST_CASE("cuda LoRA and WeGeFT training runs track the host backend's loss curve", "[cuda]") {
  // 40 AdamW steps fitting a target with half the squared error, the same model, data and
  // initialisation on the host (float) and on the GPU (F32 storage).
  auto& ctx = context();
  const Index n = 96, d_in = 40, d_out = 36, r = 4;
  for (int method = 0; method < 2; ++method) {
    wegeft::Rng rng(16);
    Matrix<float> w = random_matrix<float>(d_out, d_in, rng);
    wegeft::Vector<float> b = random_matrix<float>(1, d_out, rng).row(0).transpose();
    const Matrix<float> x = random_matrix<float>(n, d_in, rng);
    const Matrix<float> target = random_matrix<float>(n, d_out, rng);
    wegeft::ParameterStore<float> store;
    std::unique_ptr<wegeft::LoraAdapter<float>> lora;
    std::unique_ptr<wegeft::WeGeFTGenerator<float>> gen;
    std::unique_ptr<wegeft::WeGeFTAdapter<float>> wg;
    if (method == 0) {
      lora = std::make_unique<wegeft::LoraAdapter<float>>(
          store, wegeft::FrozenLinear<float>(w, &b), wegeft::LoraConfig{.rank = r, .alpha = 8.0},
          rng, "q");
    } else {
      gen = std::make_unique<wegeft::WeGeFTGenerator<float>>(
          store, d_in, wegeft::WeGeFTConfig{.rank = r, .alpha = 8.0}, rng, "q");
      wg = std::make_unique<wegeft::WeGeFTAdapter<float>>(*gen, wegeft::FrozenLinear<float>(w, &b),
                                                          rng);
    }
    cu::DeviceStore dev(ctx, store);
    cu::AdaptedLinear layer = lora ? cu::AdaptedLinear(ctx, dev, *lora, DType::F32)
                                   : cu::AdaptedLinear(ctx, dev, *wg, DType::F32);
    const wegeft::AdamWConfig config{.lr = 2e-2, .weight_decay = 0.0};
    wegeft::AdamW<float> host_opt(config);
    cu::AdamW dev_opt(config);
    auto xd = with_spare(ctx, x, DType::F32, layer.padded_rank());
    cu::Tensor yd(DType::F32, n, d_out), dyd(DType::F32, n, d_out + layer.padded_rank());
    wegeft::LoraAdapter<float>::Cache lc;
    wegeft::WeGeFTAdapter<float>::Cache wc;
    Matrix<float> y(n, d_out);
    std::vector<double> host_loss, dev_loss;
    for (int step = 0; step < 40; ++step) {
      if (lora) {
        lora->forward(y, lc, x);
        lora->backward(lc, x, y - target);
      } else {
        wg->forward(y, wc, x);
        wg->backward(wc, x, y - target);
      }
      host_loss.push_back(wt::half_squared_error(y, target));
      host_opt.step(store.values(), store.grads());
      store.zero_grad();

      const auto cache = layer.forward(ctx, yd.view(), xd.block(0, 0, n, d_in));
      const Matrix<float> yg = cu::download(ctx, yd.view());
      dev_loss.push_back(wt::half_squared_error(yg, target));
      cu::upload(ctx, dyd.block(0, 0, n, d_out), yg - target);
      layer.backward(ctx, TensorView{}, cache, dyd.block(0, 0, n, d_out));
      dev_opt.step(ctx, dev);
      dev.zero_grad(ctx);
      layer.refresh(ctx);
    }
    INFO((method == 0 ? "LoRA" : "WeGeFT")
         << ": loss " << host_loss.front() << " -> " << host_loss.back() << " (host), "
         << dev_loss.back() << " (GPU)");
    CHECK(host_loss.back() < 0.8 * host_loss.front());  // it trains
    for (std::size_t i = 0; i < host_loss.size(); ++i)
      CHECK(std::abs(dev_loss[i] - host_loss[i]) <= 1e-4 * host_loss[i]);
    // the trained parameters, brought back to a host store (as save_adapter would read them)
    const auto n_values = static_cast<Index>(store.values().size());
    const Matrix<float> host_values = wegeft::view(store.values().data(), 1, n_values);
    std::fill(store.values().begin(), store.values().end(), kNaN);
    dev.download(ctx, store);
    const Matrix<float> dev_values = wegeft::view(store.values().data(), 1, n_values);
    REQUIRE(dev_values.allFinite());
    CHECK(rel_diff(d(dev_values), d(host_values)) < 1e-3);
  }
}

TEST_CASE("cuda adapted layer refuses inputs without spare columns and adapters with dropout",
          "[cuda]") {
  auto& ctx = context();
  wegeft::Rng rng(17);
  LayerData l = layer_data(9, 16, 12, DType::BF16, rng);
  wegeft::ParameterStore<float> store;
  wegeft::LoraAdapter<float> lora(store, wegeft::FrozenLinear<float>(l.w, &l.b), {.rank = 3}, rng,
                                  "q");
  wegeft::LoraAdapter<float> dropped(store, wegeft::FrozenLinear<float>(l.w, &l.b),
                                     {.rank = 3, .dropout = 0.1}, rng, "k");
  cu::DeviceStore dev(ctx, store);
  cu::AdaptedLinear layer(ctx, dev, lora, DType::BF16);
  cu::Tensor tight(DType::BF16, 9, 16), y(DType::BF16, 9, 12), x32(DType::F32, 9, 24);
  CHECK_THROWS_WITH(layer.forward(ctx, y.view(), tight.view()),
                    Catch::Contains("row stride 16; the layer needs 24"));
  CHECK_THROWS_WITH(layer.forward(ctx, y.view(), x32.block(0, 0, 9, 16)),
                    Catch::Contains("computes in BF16"));
  CHECK_THROWS_WITH(cu::AdaptedLinear(ctx, dev, dropped, DType::BF16),
                    Catch::Contains("LoRA dropout 0.1 is not implemented on the GPU"));
}

TEST_CASE("cuda clip_grad_norm returns the host norm and scales the gradients as the host does",
          "[cuda]") {
  auto& ctx = context();
  wegeft::Rng rng(15);
  wegeft::ParameterStore<float> host;
  const auto a = host.add("a", 7, 13), b = host.add("b", 1, 1001);  // padding between them
  host.grad(a) = random_matrix<float>(7, 13, rng);
  host.grad(b) = random_matrix<float>(1, 1001, rng);
  cu::DeviceStore dev(ctx, host);
  cu::upload(ctx, dev.grad(a), host.grad(a));
  cu::upload(ctx, dev.grad(b), host.grad(b));
  const double dev_norm = cu::clip_grad_norm(ctx, dev, 2.0);
  const double host_norm = wegeft::clip_grad_norm(host.grads(), 2.0);
  CHECK(std::abs(dev_norm - host_norm) / host_norm < 1e-12);
  REQUIRE(host_norm > 2.0);  // so the gradients were scaled
  CHECK(rel_diff(d(cu::download(ctx, dev.grad(a))), d(host.grad(a))) < 1e-6);
  CHECK(rel_diff(d(cu::download(ctx, dev.grad(b))), d(host.grad(b))) < 1e-6);
  // below the bound: untouched
  const Matrix<float> before = cu::download(ctx, dev.grad(b));
  cu::clip_grad_norm(ctx, dev, 1e6);
  CHECK((cu::download(ctx, dev.grad(b)) - before).cwiseAbs().maxCoeff() == 0.0f);
  host.grad(b)(0, 3) = std::numeric_limits<float>::infinity();
  cu::upload(ctx, dev.grad(b), host.grad(b));
  CHECK_THROWS_WITH(cu::clip_grad_norm(ctx, dev, 1.0), Catch::Contains("NaN or infinite"));
}
