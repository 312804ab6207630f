// The Python module gfkernels._C. Importing it loads this library, whose static initialisers
// register the ops (torch.ops.gfkernels.*: schemas in ops/, kernels in cpu/ and cuda/); the
// module itself only reports how it was built. Plain Python C API (no pybind11): this file
// compiles in a second.
#include <Python.h>

#include "sampling.h"

#ifndef GFK_CUDA_ARCH_LIST
#define GFK_CUDA_ARCH_LIST ""
#endif

#ifdef GFK_WITH_CUDA
static constexpr bool kWithCuda = true;
#else
static constexpr bool kWithCuda = false;
#endif

static PyModuleDef gfkernels_module = {
    PyModuleDef_HEAD_INIT, "_C",
    "gfkernels compiled core: ops are registered under torch.ops.gfkernels", -1, nullptr};

PyMODINIT_FUNC PyInit__C() {
  PyObject* module = PyModule_Create(&gfkernels_module);
  if (module == nullptr) return nullptr;
  if (PyModule_AddObject(module, "with_cuda", PyBool_FromLong(kWithCuda)) < 0 ||
      PyModule_AddStringConstant(module, "cuda_arch_list", GFK_CUDA_ARCH_LIST) < 0 ||
      PyModule_AddObject(module, "max_output_elements_per_box",
                         PyLong_FromLongLong(gfkernels::kMaxOutputElementsPerBox)) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
