# LibTorch from a Python torch package (PyPI torch==2.11.0 in the project venv here; the GPU
# host's own torch there). Defines ksserve::torch: torch_cpu + c10, and with KSSERVE_WITH_CUDA
# also torch_cuda + c10_cuda. torch's own TorchConfig.cmake is not used: for a CPU build it
# would still demand the CUDA toolkit and link libtorch_cuda.
set(KSSERVE_PYTHON "" CACHE FILEPATH "Python interpreter whose torch package provides LibTorch")
if(NOT KSSERVE_PYTHON)
  if(DEFINED ENV{KSSERVE_VENV} AND EXISTS "$ENV{KSSERVE_VENV}/bin/python")
    set(KSSERVE_PYTHON "$ENV{KSSERVE_VENV}/bin/python")
  elseif(EXISTS /opt/ksserve/venv/bin/python)
    set(KSSERVE_PYTHON /opt/ksserve/venv/bin/python)
  else()
    find_program(KSSERVE_PYTHON_FOUND NAMES python3 REQUIRED)
    set(KSSERVE_PYTHON ${KSSERVE_PYTHON_FOUND})
  endif()
  set(KSSERVE_PYTHON ${KSSERVE_PYTHON} CACHE FILEPATH "" FORCE)
endif()

# find_spec locates the package without importing it (an import loads every CUDA library).
execute_process(
  COMMAND ${KSSERVE_PYTHON} -c
    "import importlib.util as u, site; s = u.find_spec('torch'); print(s.submodule_search_locations[0])"
  OUTPUT_VARIABLE _torch_root OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0 OR NOT EXISTS "${_torch_root}/lib")
  message(FATAL_ERROR "No torch package found for ${KSSERVE_PYTHON}; run scripts/setup.sh "
                      "or pass -DKSSERVE_PYTHON=<python with torch>")
endif()
set(KSSERVE_TORCH_ROOT ${_torch_root} CACHE PATH "torch package directory" FORCE)
get_filename_component(KSSERVE_PYTHON_SITE ${KSSERVE_TORCH_ROOT} DIRECTORY)

file(STRINGS ${KSSERVE_TORCH_ROOT}/version.py _torch_version_line REGEX "^__version__")
string(REGEX REPLACE "^__version__ *= *['\"]([^'\"]+)['\"].*" "\\1" KSSERVE_TORCH_VERSION "${_torch_version_line}")
message(STATUS "LibTorch ${KSSERVE_TORCH_VERSION} from ${KSSERVE_TORCH_ROOT}")

function(_ksserve_torch_library var name)
  find_library(${var} ${name} PATHS ${KSSERVE_TORCH_ROOT}/lib NO_DEFAULT_PATH REQUIRED)
endfunction()
_ksserve_torch_library(KSSERVE_LIBTORCH_CPU torch_cpu)
_ksserve_torch_library(KSSERVE_LIBC10 c10)

add_library(ksserve_torch INTERFACE)
add_library(ksserve::torch ALIAS ksserve_torch)
target_include_directories(ksserve_torch SYSTEM INTERFACE
  ${KSSERVE_TORCH_ROOT}/include ${KSSERVE_TORCH_ROOT}/include/torch/csrc/api/include)
target_link_libraries(ksserve_torch INTERFACE ${KSSERVE_LIBTORCH_CPU} ${KSSERVE_LIBC10})

if(KSSERVE_WITH_CUDA)
  _ksserve_torch_library(KSSERVE_LIBTORCH_CUDA torch_cuda)
  _ksserve_torch_library(KSSERVE_LIBC10_CUDA c10_cuda)
  # libtorch_cuda registers the CUDA kernels from static initializers and is never referenced
  # by symbol: keep it even where the linker defaults to --as-needed (Ubuntu).
  target_link_libraries(ksserve_torch INTERFACE
    "-Wl,--no-as-needed,${KSSERVE_LIBTORCH_CUDA},--as-needed" ${KSSERVE_LIBC10_CUDA} CUDA::cudart)
  target_compile_definitions(ksserve_torch INTERFACE USE_CUDA)
endif()
