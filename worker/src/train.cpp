// Training's few libtorch calls that tch does not expose: bf16 autocast on
// the CPU or CUDA (tch's `autocast` switches CUDA alone, to its default dtype,
// fp16), and an AdamW step, gradient clipping and zeroing over all parameters
// at once with libtorch's fused and multi-tensor kernels (tch's optimizer
// loops over the parameters, some ten kernel launches each).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

namespace {

at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }

char *error(const char *what) {
  char *copy = static_cast<char *>(std::malloc(std::strlen(what) + 1));
  if (copy != nullptr) {
    std::strcpy(copy, what);
  }
  return copy;
}

// An AdamW's parameters and state, one entry per parameter.
struct AdamW {
  std::vector<at::Tensor> params, exp_avg, exp_avg_sq, steps;
  at::Tensor step;
  double beta1, beta2, eps, weight_decay;
};

std::vector<at::Tensor> defined_grads(const std::vector<at::Tensor> &params) {
  std::vector<at::Tensor> grads;
  for (const auto &p : params) {
    if (p.grad().defined()) {
      grads.push_back(p.grad());
    }
  }
  return grads;
}

} // namespace

extern "C" {

// Turns bf16 autocast on for the CPU (cuda == 0) or CUDA; returns 1 if it
// was on before, 0 if not, -1 if libtorch refused.
int pipe_autocast_enter(int cuda) {
  try {
    auto dev = device_type(cuda);
    bool before = at::autocast::is_autocast_enabled(dev);
    at::autocast::set_autocast_dtype(dev, at::kBFloat16);
    at::autocast::set_autocast_enabled(dev, true);
    at::autocast::increment_nesting();
    return before ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// Undoes `pipe_autocast_enter`, given what it returned.
void pipe_autocast_exit(int cuda, int before) {
  try {
    auto dev = device_type(cuda);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(dev, before == 1);
  } catch (...) {
  }
}

// Lets scaled_dot_product_attention pick cuDNN's kernels (on) or not (off).
void pipe_sdp_use_cudnn(int on) {
  try {
    at::globalContext().setSDPUseCuDNN(on != 0);
  } catch (...) {
  }
}

// AdamW state for `n` parameters (fp32, all on one device); null and
// `*err` set on failure.
void *pipe_adamw_new(const at::Tensor *const *params, int n, double beta1,
                     double beta2, double eps, double weight_decay,
                     char **err) {
  try {
    auto *s = new AdamW{};
    s->beta1 = beta1;
    s->beta2 = beta2;
    s->eps = eps;
    s->weight_decay = weight_decay;
    for (int i = 0; i < n; i++) {
      const at::Tensor &p = *params[i];
      s->params.push_back(p);
      s->exp_avg.push_back(at::zeros_like(p, at::MemoryFormat::Contiguous));
      s->exp_avg_sq.push_back(at::zeros_like(p, at::MemoryFormat::Contiguous));
    }
    if (n > 0) {
      s->step = at::zeros({}, params[0]->options().dtype(at::kFloat));
    }
    s->steps.assign(static_cast<size_t>(n), s->step);
    return s;
  } catch (const std::exception &e) {
    *err = error(e.what());
    return nullptr;
  }
}

void pipe_adamw_free(void *state) { delete static_cast<AdamW *>(state); }

// Sets every defined gradient to zero (they stay defined).
char *pipe_adamw_zero_grad(void *state) {
  try {
    auto grads = defined_grads(static_cast<AdamW *>(state)->params);
    if (!grads.empty()) {
      at::_foreach_zero_(grads);
    }
    return nullptr;
  } catch (const std::exception &e) {
    return error(e.what());
  }
}

// Drops every gradient (`zero_grad(set_to_none=True)`): the next backward
// hands each parameter its gradient instead of adding it to zeros.
char *pipe_adamw_drop_grad(void *state) {
  try {
    for (auto &p : static_cast<AdamW *>(state)->params) {
      p.mutable_grad().reset();
    }
    return nullptr;
  } catch (const std::exception &e) {
    return error(e.what());
  }
}

// Scales the gradients so that their global L2 norm is at most `max_norm`.
//
// On the CPU the norm is read back, which costs nothing there: the sum of
// squares comes from BLAS dot products, and a step whose norm is within
// bounds is not scaled at all (rather than by 1). On MiniLM's 91 MB of
// gradients this takes 5 ms a step where libtorch's per-tensor norm kernels
// and the scaling took 15. On a GPU nothing is read back: the scaling is
// always applied, by a factor clamped to 1.
char *pipe_adamw_clip_grad_norm(void *state, double max_norm) {
  try {
    auto grads = defined_grads(static_cast<AdamW *>(state)->params);
    if (grads.empty()) {
      return nullptr;
    }
    if (grads[0].device().is_cpu()) {
      double squares = 0.0;
      for (const auto &g : grads) {
        auto flat = g.reshape(-1);
        squares += at::dot(flat, flat).item<double>();
      }
      double coef = max_norm / (std::sqrt(squares) + 1e-6);
      if (!(coef >= 1.0)) {  // a NaN norm spreads to every gradient
        at::_foreach_mul_(grads, at::Scalar(coef));
      }
      return nullptr;
    }
    auto total = at::stack(at::_foreach_norm(grads, 2)).norm();
    auto coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
    at::_foreach_mul_(grads, coef);
    return nullptr;
  } catch (const std::exception &e) {
    return error(e.what());
  }
}

// One AdamW step at learning rate `lr` (decoupled weight decay), as
// torch.optim.AdamW(fused=True); every parameter must have a gradient.
char *pipe_adamw_step(void *state, double lr) {
  try {
    auto *s = static_cast<AdamW *>(state);
    if (s->params.empty()) {
      return nullptr;
    }
    std::vector<at::Tensor> grads;
    for (const auto &p : s->params) {
      if (!p.grad().defined()) {
        return error("a parameter has no gradient");
      }
      grads.push_back(p.grad());
    }
    at::NoGradGuard no_grad;
    s->step.add_(1);
    at::_fused_adamw_(s->params, grads, s->exp_avg, s->exp_avg_sq, {},
                      s->steps, lr, s->beta1, s->beta2, s->weight_decay,
                      s->eps, false, false);
    return nullptr;
  } catch (const std::exception &e) {
    return error(e.what());
  }
}

} // extern "C"
