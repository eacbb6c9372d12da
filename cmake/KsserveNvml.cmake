# nvml.h only: NVML itself is dlopen()ed at run time (server/nvml.cc), so every binary runs on
# machines without an NVIDIA driver. The header comes from the venv's nvidia-nvml-dev wheel, or
# from a CUDA toolkit that ships it.
find_path(KSSERVE_NVML_INCLUDE_DIR nvml.h
  HINTS ${KSSERVE_PYTHON_SITE}/nvidia/cu13/include ${KSSERVE_PYTHON_SITE}/nvidia/nvml/include
        ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include
  REQUIRED)
add_library(ksserve_nvml_headers INTERFACE)
add_library(ksserve::nvml_headers ALIAS ksserve_nvml_headers)
target_include_directories(ksserve_nvml_headers SYSTEM INTERFACE ${KSSERVE_NVML_INCLUDE_DIR})
