// Optimizers, clipping and schedules: trajectories against torch.optim golden files, closed-form
// schedule values, and state save/restore.
#include "support.hpp"

#include <wegeft/optim/adamw.hpp>
#include <wegeft/optim/clip.hpp>
#include <wegeft/optim/schedule.hpp>
#include <wegeft/optim/sgd.hpp>

using namespace wegeft;
using M = Matrix<double>;

namespace {

template <class Opt>
void check_trajectory(Opt& opt, const wt::Golden& g, const std::string& name, double tol) {
  const M p0 = g.get("p0"), grads = g.get("grads"), want = g.get(name + ".params");
  std::vector<double> p(p0.data(), p0.data() + p0.size());
  for (Index s = 0; s < grads.rows(); ++s) {
    std::vector<double> grad(grads.row(s).data(), grads.row(s).data() + grads.cols());
    opt.step(std::span<double>(p), std::span<const double>(grad));
    const double err = (ConstVectorMap<double>(p.data(), Index(p.size())) - want.row(s).transpose())
                           .cwiseAbs()
                           .maxCoeff();
    INFO(name << " step " << s + 1);
    CHECK(err < tol);
  }
}

}  // namespace

TEST_CASE("AdamW follows torch.optim.AdamW over 10 steps", "[optim][golden]") {
  const wt::Golden g("optim.txt");
  const M c = g.get("adamw.config");
  AdamW<double> opt(
      {.lr = c(0, 0), .beta1 = c(0, 1), .beta2 = c(0, 2), .eps = c(0, 3), .weight_decay = c(0, 4)});
  check_trajectory(opt, g, "adamw", 1e-13);
  CHECK(opt.state().step == 10);
}

TEST_CASE("SGD with momentum and with Nesterov follows torch.optim.SGD over 10 steps",
          "[optim][golden]") {
  const wt::Golden g("optim.txt");
  for (const std::string name : {"sgd_momentum", "sgd_nesterov"}) {
    const M c = g.get(name + ".config");
    Sgd<double> opt({.lr = c(0, 0),
                     .momentum = c(0, 1),
                     .dampening = c(0, 2),
                     .weight_decay = c(0, 3),
                     .nesterov = c(0, 4) != 0});
    check_trajectory(opt, g, name, 1e-13);
  }
}

TEST_CASE("clip_grad_norm equals torch.nn.utils.clip_grad_norm_", "[optim][golden]") {
  const wt::Golden g("optim.txt");
  const M grad = g.get("clip.grad");
  std::vector<double> v(grad.data(), grad.data() + grad.size());
  const double norm = clip_grad_norm(std::span<double>(v), 0.5);
  CHECK(norm == Approx(g.get("clip.norm")(0, 0)).epsilon(1e-14));
  const M clipped = g.get("clip.clipped");
  for (Index i = 0; i < clipped.cols(); ++i)
    CHECK(v[std::size_t(i)] == Approx(clipped(0, i)).epsilon(1e-13));
  std::vector<double> small = {0.1, -0.2};
  CHECK(clip_grad_norm(std::span<double>(small), 1.0) == Approx(std::sqrt(0.05)));
  CHECK(small[0] == 0.1);  // below the threshold: untouched
  std::vector<double> bad = {1.0, NAN};
  CHECK_THROWS_WITH(clip_grad_norm(std::span<double>(bad), 1.0),
                    Catch::Contains("NaN or infinite"));
}

TEST_CASE("AdamW state saved mid-run and restored gives a bit-identical continuation", "[optim]") {
  Rng rng(1);
  std::vector<float> p(37), grad(37);
  for (auto& x : p) x = rng.uniform(-1.f, 1.f);
  AdamW<float> a({.lr = 3e-3, .weight_decay = 0.05});
  const auto next_grad = [&](Rng& r) {
    for (auto& g : grad) g = r.uniform(-1.f, 1.f);
  };
  Rng grads(9);
  for (int s = 0; s < 4; ++s) {
    next_grad(grads);
    a.step(std::span<float>(p), std::span<const float>(grad));
  }
  const auto saved_state = a.state();
  const auto saved_params = p;
  const auto saved_grads = grads.state();
  for (int s = 0; s < 5; ++s) {
    next_grad(grads);
    a.step(std::span<float>(p), std::span<const float>(grad));
  }
  AdamW<float> b({.lr = 3e-3, .weight_decay = 0.05});
  b.set_state(saved_state);
  std::vector<float> q = saved_params;
  grads.set_state(saved_grads);
  for (int s = 0; s < 5; ++s) {
    next_grad(grads);
    b.step(std::span<float>(q), std::span<const float>(grad));
  }
  CHECK(q == p);
  std::vector<float> wrong(5);
  CHECK_THROWS_WITH(b.step(std::span<float>(wrong), std::span<const float>(wrong)),
                    Catch::Contains("holds 37 parameters but the step got 5"));
  CHECK_THROWS_AS(AdamW<float>({.beta1 = 1.0}), Error);
}

TEST_CASE("schedules follow the closed forms of Hugging Face's warmup schedules", "[optim]") {
  const Schedule constant{ScheduleKind::constant, 4, 0};
  CHECK(constant.multiplier(0) == 0.0);
  CHECK(constant.multiplier(2) == 0.5);
  CHECK(constant.multiplier(4) == 1.0);
  CHECK(constant.multiplier(1000) == 1.0);
  const Schedule linear{ScheduleKind::linear, 10, 110};
  CHECK(linear.multiplier(5) == 0.5);
  CHECK(linear.multiplier(10) == 1.0);
  CHECK(linear.multiplier(60) == 0.5);
  CHECK(linear.multiplier(110) == 0.0);
  CHECK(linear.multiplier(200) == 0.0);
  const Schedule cosine{ScheduleKind::cosine, 0, 100};
  CHECK(cosine.multiplier(0) == 1.0);
  CHECK(cosine.multiplier(50) == Approx(0.5));
  CHECK(cosine.multiplier(25) == Approx(0.5 * (1 + std::cos(std::numbers::pi / 4))));
  CHECK(cosine.multiplier(100) == Approx(0.0).margin(1e-15));
  CHECK_THROWS_AS((Schedule{ScheduleKind::linear, 0, 0}.multiplier(1)), Error);
}

TEST_CASE("macro F1 and accuracy equal the hand-computed scikit-learn values", "[optim][metrics]") {
  // y_true = [0 0 1 1 2 2 2], y_pred = [0 1 1 1 2 0 2]; class 3 never occurs and does not count.
  // Per class F1 = 2 TP / (2 TP + FP + FN): 2/4, 4/5, 4/5; sklearn f1_score(average="macro") = 0.7.
  wegeft::Confusion c(4);
  const int truth[] = {0, 0, 1, 1, 2, 2, 2}, pred[] = {0, 1, 1, 1, 2, 0, 2};
  for (int i = 0; i < 7; ++i) c.add(truth[i], pred[i]);
  CHECK(c.accuracy() == Approx(5.0 / 7.0));
  CHECK(c.f1(0) == Approx(0.5));
  CHECK(c.f1(1) == Approx(0.8));
  CHECK(c.f1(2) == Approx(0.8));
  CHECK(std::isnan(c.f1(3)));
  CHECK(c.macro_f1() == Approx(0.7));
  // A class that is only ever missed counts with F1 0: class 0 becomes 2/5, macro (0.4+0.8+0.8+0)/4.
  c.add(3, 0);
  CHECK(c.f1(3) == 0.0);
  CHECK(c.macro_f1() == Approx(0.5));
  CHECK(c.accuracy() == Approx(5.0 / 8.0));
  CHECK_THROWS_WITH(c.add(4, 0), Catch::Contains("outside [0, 4)"));
  CHECK(std::isnan(wegeft::Confusion(3).macro_f1()));
}
