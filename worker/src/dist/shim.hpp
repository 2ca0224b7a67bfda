// The C ABI conventions of the collectives shims (c10d.cpp, nccl.cpp): every
// function returns NULL on success or a malloc'd error message (freed with
// pipe_c10d_free_error); C++ exceptions never cross it.
#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

namespace pipe_shim {

inline char* error_string(const std::string& message) {
  char* out = static_cast<char*>(std::malloc(message.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, message.c_str(), message.size() + 1);
  }
  return out;
}

// c10d's messages carry a C++ backtrace after the first line; keep the line.
inline std::string first_line(const std::string& s) {
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

} // namespace pipe_shim
