// libtorch's c10d for worker/src/dist/mod.rs: a TCPStore, a process group on
// it (gloo; NCCL only in a CUDA build) and the two collectives data-parallel
// fine-tuning needs, in-place sum all-reduce and barrier.
//
// A C ABI: every function returns NULL on success or a malloc'd error message
// (freed with pipe_c10d_free_error); C++ exceptions never cross it.

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {

char* error_string(const std::string& message) {
  char* out = static_cast<char*>(std::malloc(message.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, message.c_str(), message.size() + 1);
  }
  return out;
}

// c10d's messages carry a C++ backtrace after the first line; keep the line.
std::string first_line(const std::string& s) {
  auto end = s.find('\n');
  return end == std::string::npos ? s : s.substr(0, end);
}

template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const std::exception& e) {
    return error_string(first_line(e.what()));
  } catch (...) {
    return error_string("unknown C++ exception");
  }
}

struct Group {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

void wait(const c10::intrusive_ptr<c10d::Work>& work, std::chrono::milliseconds timeout) {
  work->wait(timeout);
}

} // namespace

extern "C" {

// A TCPStore on host:port. The server (rank 0) binds it (port 0: a free one)
// and does not wait for the others; *port_out is the port it listens on.
char* pipe_c10d_store_new(
    const char* host,
    uint16_t port,
    int is_server,
    int world,
    int64_t timeout_ms,
    void** store_out,
    uint16_t* port_out) {
  return guarded([&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<std::size_t>(world);
    opts.waitWorkers = false;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *port_out = store->getPort();
    *store_out = new c10::intrusive_ptr<c10d::Store>(std::move(store));
  });
}

void pipe_c10d_store_free(void* store) {
  delete static_cast<c10::intrusive_ptr<c10d::Store>*>(store);
}

// A process group of `world` ranks over `store`; blocks until every rank
// has joined or the timeout passes. backend: "gloo" or "nccl".
char* pipe_c10d_group_new(
    void* store,
    const char* backend,
    int rank,
    int world,
    int64_t timeout_ms,
    void** group_out) {
  return guarded([&] {
    auto& s = *static_cast<c10::intrusive_ptr<c10d::Store>*>(store);
    auto timeout = std::chrono::milliseconds(timeout_ms);
    std::string name(backend);
    c10::intrusive_ptr<c10d::Backend> b;
    if (name == "gloo") {
      auto opts = c10d::ProcessGroupGloo::Options::create_default(timeout);
      opts->threads = 1;
      b = c10::make_intrusive<c10d::ProcessGroupGloo>(s, rank, world, opts);
    } else if (name == "nccl") {
      throw std::runtime_error(
          "backend nccl: pipe-worker was built without CUDA (use backend gloo)");
    } else {
      throw std::runtime_error("unknown backend `" + name + "`");
    }
    *group_out = new Group{std::move(b), timeout};
  });
}

void pipe_c10d_group_free(void* group) {
  delete static_cast<Group*>(group);
}

// Sums `tensor` (a tch Tensor, i.e. an at::Tensor*) across the group, in place.
char* pipe_c10d_allreduce_sum(void* group, void* tensor) {
  return guarded([&] {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*static_cast<at::Tensor*>(tensor)};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    opts.timeout = g->timeout;
    wait(g->backend->allreduce(tensors, opts), g->timeout);
  });
}

char* pipe_c10d_barrier(void* group) {
  return guarded([&] {
    auto* g = static_cast<Group*>(group);
    c10d::BarrierOptions opts;
    opts.timeout = g->timeout;
    wait(g->backend->barrier(opts), g->timeout);
  });
}

void pipe_c10d_free_error(char* message) {
  std::free(message);
}

} // extern "C"
