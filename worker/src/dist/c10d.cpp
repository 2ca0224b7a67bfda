// libtorch's c10d for worker/src/dist/mod.rs: a TCPStore, a process group on
// it (gloo here; NCCL's comes from nccl.cpp) and the two collectives
// data-parallel fine-tuning needs, in-place sum all-reduce and barrier.
// The C ABI of shim.hpp.

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "shim.hpp"

namespace {

using pipe_shim::guarded;

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

// A gloo process group of `world` ranks over `store`; blocks until every
// rank has joined or the timeout passes.
char* pipe_c10d_gloo_new(
    void* store,
    int rank,
    int world,
    int64_t timeout_ms,
    void** group_out) {
  return guarded([&] {
    auto& s = *static_cast<c10::intrusive_ptr<c10d::Store>*>(store);
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto opts = c10d::ProcessGroupGloo::Options::create_default(timeout);
    opts->threads = 1;
    c10::intrusive_ptr<c10d::Backend> b =
        c10::make_intrusive<c10d::ProcessGroupGloo>(s, rank, world, opts);
    *group_out = new Group{std::move(b), timeout};
  });
}

// A group on a backend made elsewhere (nccl.cpp): takes over `backend`, a
// heap-allocated c10::intrusive_ptr<c10d::Backend>.
void pipe_c10d_group_wrap(void* backend, int64_t timeout_ms, void** group_out) {
  auto* b = static_cast<c10::intrusive_ptr<c10d::Backend>*>(backend);
  *group_out = new Group{std::move(*b), std::chrono::milliseconds(timeout_ms)};
  delete b;
}

// Shuts the backend down (NCCL's watchdog and communicators; a no-op for
// gloo) and frees the group.
void pipe_c10d_group_free(void* group) {
  auto* g = static_cast<Group*>(group);
  try {
    g->backend->shutdown();
  } catch (...) {
    // Ending anyway: a failed group has nothing left to shut down cleanly.
  }
  delete g;
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
