// A typed handle to one of this library's ops, for the C++ autograd kernels that call the
// op below autograd (look it up once, keep it in a function-local static).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

namespace aigc_fast {

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace aigc_fast
