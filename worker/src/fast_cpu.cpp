// CPU inference module for `pipe serve`: a TorchScript module, frozen, with
// every linear layer on oneDNN weights packed once at load time (and a GELU
// that follows one fused into it). At the small row counts of single-sentence
// requests the linear layers are most of the time, and plain `aten::linear`
// re-reads and re-lays out its weights on every call; packed, they are about
// twice as fast. With `bf16` (`pipe serve --bf16`) the packed weights are
// bf16 and the products run in bf16 (pack_linears). The file on disk is not
// changed: model.pt stays portable fp32.
//
// A C ABI for worker/src/fast.rs. Errors come back as malloc'd strings.

#include <torch/script.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/InferenceMode.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using torch::jit::Graph;
using torch::jit::NamedValue;
using torch::jit::Node;
using torch::jit::Value;

char* error_string(const std::string& message) {
  char* out = static_cast<char*>(std::malloc(message.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, message.c_str(), message.size() + 1);
  }
  return out;
}

at::Tensor reorder_linear_weight(const at::Tensor& weight, int64_t rows) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(
      "mkldnn::_reorder_linear_weight", "");
  torch::jit::Stack stack{weight, rows};
  op.callBoxed(&stack);
  return stack.at(0).toTensor();
}

// The constant CPU float tensor behind `v`, if it is one.
std::optional<at::Tensor> constant_weight(Value* v) {
  auto iv = torch::jit::toIValue(v);
  if (!iv || !iv->isTensor()) {
    return std::nullopt;
  }
  at::Tensor t = iv->toTensor();
  if (t.dim() != 2 || t.scalar_type() != at::kFloat || !t.device().is_cpu() ||
      t.layout() != at::kStrided) {
    return std::nullopt;
  }
  return t;
}

// A linear layer's bias when it is a constant: a tensor, or None.
std::optional<c10::IValue> constant_bias(Value* v) {
  auto iv = torch::jit::toIValue(v);
  if (!iv || !(iv->isNone() || iv->isTensor())) {
    return std::nullopt;
  }
  return iv;
}

// The graph's `aten::linear` nodes in order, copied out: the passes rewrite
// them as they go.
std::vector<Node*> linear_nodes(const std::shared_ptr<Graph>& graph) {
  static const auto linear = c10::Symbol::fromQualString("aten::linear");
  std::vector<Node*> linears;
  for (Node* n : graph->nodes()) {
    if (n->kind() == linear) {
      linears.push_back(n);
    }
  }
  return linears;
}

// int8 weights for `quantized::linear_dynamic`: symmetric, one scale per
// output channel, prepacked for the CPU's quantized engine (FBGEMM: VNNI
// where the CPU has it). Activations are quantized per call, per tensor.
c10::IValue prepack_int8(const at::Tensor& weight, const c10::IValue& bias) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(
      "quantized::linear_prepack", "");
  at::Tensor scales =
      weight.abs().amax({1}).div(127.0).clamp_min(1e-12).to(at::kDouble);
  at::Tensor zero_points = at::zeros({weight.size(0)}, at::kLong);
  at::Tensor q =
      at::quantize_per_channel(weight, scales, zero_points, 0, at::kQInt8);
  torch::jit::Stack stack{q, bias};
  op.callBoxed(&stack);
  return stack.at(0);
}

// Rewrites every `aten::linear` with a constant fp32 weight into
// `quantized::linear_dynamic` on int8 weights. Returns how many.
int quantize_linears(const std::shared_ptr<Graph>& graph) {
  static const auto dynamic =
      c10::Symbol::fromQualString("quantized::linear_dynamic");
  if (!c10::Dispatcher::singleton().findSchema({"quantized::linear_prepack", ""}) ||
      !c10::Dispatcher::singleton().findSchema({"quantized::linear_dynamic", ""})) {
    return 0;
  }
  int rewritten = 0;
  for (Node* n : linear_nodes(graph)) {
    auto weight = constant_weight(n->input(1));
    auto bias = constant_bias(n->input(2));
    if (!weight || !bias) {
      continue;
    }
    torch::jit::WithInsertPoint guard(n);
    Value* packed = graph->insertConstant(prepack_int8(*weight, *bias));
    Value* out = graph->insert(
        dynamic, {NamedValue(n->input(0)), NamedValue(packed),
                  NamedValue(c10::IValue(false))});
    out->setType(n->output()->type());
    n->output()->replaceAllUsesWith(out);
    n->destroy();
    ++rewritten;
  }
  torch::jit::EliminateDeadCode(graph);
  return rewritten;
}

// `aten::linear(x, W, b)` with a constant W becomes
// `mkldnn::_linear_pointwise(x, packed W, b, attr, [], algorithm)`; returns how
// many were rewritten. With `bf16`, W and b are bf16 and the product runs in
// bf16 (AMX or AVX512-BF16 where the CPU has them): x is cast to bf16 before
// and the result back to fp32 after, so everything else stays fp32.
int pack_linears(const std::shared_ptr<Graph>& graph, int64_t rows, bool bf16) {
  static const auto gelu = c10::Symbol::fromQualString("aten::gelu");
  static const auto pointwise =
      c10::Symbol::fromQualString("mkldnn::_linear_pointwise");
  static const auto to = c10::Symbol::fromQualString("aten::to");
  auto cast = [&](Value* v, at::ScalarType dtype) {
    return graph->insert(to, {NamedValue(v), NamedValue(c10::IValue(dtype)),
                              NamedValue(false), NamedValue(false)});
  };
  int rewritten = 0;
  if (!at::hasMKLDNN() ||
      !c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""}) ||
      !c10::Dispatcher::singleton().findSchema(
          {"mkldnn::_reorder_linear_weight", ""})) {
    return rewritten;  // a libtorch without oneDNN: plain frozen module
  }
  // With bf16, the bf16 product behind each fp32 result this pass casts back:
  // a linear layer that reads such a result (the feed-forward's second, after
  // the first and its GELU) takes the bf16 product itself, not a cast of a
  // cast (bf16 to fp32 and back is exact).
  std::unordered_map<Value*, Value*> bf16_of;
  for (Node* n : linear_nodes(graph)) {
    auto weight = constant_weight(n->input(1));
    if (!weight) {
      continue;
    }
    // A GELU that is the only user of the output runs inside the linear.
    Node* fused = nullptr;
    std::string attr = "none";
    c10::IValue algorithm;
    if (n->output()->uses().size() == 1) {
      Node* user = n->output()->uses()[0].user;
      if (user->kind() == gelu && user->inputs().size() == 2) {
        auto approximate = torch::jit::toIValue(user->input(1));
        if (approximate && approximate->isString()) {
          fused = user;
          attr = "gelu";
          algorithm = approximate->toStringRef();
        }
      }
    }
    torch::jit::WithInsertPoint guard(n);
    Value* x = n->input(0);
    Value* bias = n->input(2);
    if (bf16) {
      auto bias_value = constant_bias(bias);
      if (!bias_value) {
        continue;  // a bias computed at run time: leave this one fp32
      }
      weight = weight->to(at::kBFloat16);
      if (bias_value->isTensor()) {
        bias = graph->insertConstant(bias_value->toTensor().to(at::kBFloat16));
      }
      auto product = bf16_of.find(x);
      x = product != bf16_of.end() ? product->second : cast(x, at::kBFloat16);
    }
    // Tensors without storage cannot be `prim::Constant`s; libtorch's own
    // oneDNN freezing pass holds them in this node kind.
    Node* constant = graph->create(
        c10::Symbol::fromQualString("prim::ConstantMKLDNNTensor"), 1);
    constant->t_(c10::attr::value, reorder_linear_weight(*weight, rows));
    constant->output()->setType(c10::TensorType::get());
    Value* packed = graph->insertNode(constant)->output();
    Value* scalars = graph
                         ->insertNode(graph->createList(
                             c10::OptionalType::create(c10::NumberType::get()),
                             {}))
                         ->output();
    Value* out = graph->insert(
        pointwise,
        {NamedValue(x),
         NamedValue(packed),
         NamedValue(bias),
         NamedValue(c10::IValue(attr)),
         NamedValue(scalars),
         NamedValue(algorithm)});
    if (bf16) {
      Value* product = out;
      out = cast(out, at::kFloat);
      bf16_of[out] = product;
    }
    out->setType(n->output()->type());
    if (fused != nullptr) {
      fused->output()->replaceAllUsesWith(out);
      fused->destroy();
    }
    n->output()->replaceAllUsesWith(out);
    n->destroy();
    ++rewritten;
  }
  torch::jit::EliminateDeadCode(graph);
  return rewritten;
}

}  // namespace

extern "C" {

// Loads `path` for CPU inference. `rows`: the row count the weights are laid
// out for; `precision` of the linear layers: 0 fp32, 1 bf16, 2 int8 (dynamic
// quantization). `packed` gets the number of linear layers rewritten.
char* pipe_fast_load(const char* path, int64_t rows, int precision,
                     void** module, int* packed) {
  try {
    auto m = torch::jit::load(std::string(path), c10::Device(c10::kCPU));
    m.eval();
    auto frozen = torch::jit::freeze(m);
    auto graph = frozen.get_method("forward").graph();
    *packed = precision == 2 ? quantize_linears(graph)
                             : pack_linears(graph, rows, precision == 1);
    *module = new torch::jit::Module(std::move(frozen));
    return nullptr;
  } catch (const std::exception& e) {
    return error_string(e.what());
  }
}

// Runs forward on `n` tensors (tch's `at::Tensor*`); `out` gets a new tensor,
// or the first element when the module returns a tuple.
char* pipe_fast_forward(void* module, void** inputs, int n, void** out) {
  try {
    c10::InferenceMode guard;
    auto* m = static_cast<torch::jit::Module*>(module);
    std::vector<c10::IValue> args;
    args.reserve(n);
    for (int i = 0; i < n; ++i) {
      args.emplace_back(*static_cast<at::Tensor*>(inputs[i]));
    }
    c10::IValue result = m->forward(std::move(args));
    if (result.isTuple()) {
      result = result.toTupleRef().elements().at(0);
    }
    if (!result.isTensor()) {
      return error_string("the model returned " + result.tagKind() +
                          ", not a tensor");
    }
    *out = new at::Tensor(result.toTensor());
    return nullptr;
  } catch (const std::exception& e) {
    return error_string(e.what());
  }
}

void pipe_fast_free(void* module) {
  delete static_cast<torch::jit::Module*>(module);
}

void pipe_fast_free_error(char* message) { std::free(message); }

}  // extern "C"
