"""Builds aigc_fast._C: the C++ CPU kernels always, the CUDA kernels when nvcc and a CUDA
build of torch are present (or when AIGC_FAST_CUDA=1 forces them; AIGC_FAST_CUDA=0 skips them).

Environment: AIGC_FAST_CUDA=1|0|auto (auto, or unset: CUDA when it can be built),
TORCH_CUDA_ARCH_LIST (default without a visible GPU:
"8.0;9.0+PTX"), MAX_JOBS (parallel compile jobs, read by torch's ninja build).
"""

import ctypes
import functools
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - what a user sees without torch
    sys.exit(
        "aigc_fast builds against PyTorch, which is not installed in this build environment.\n"
        "Install torch first, then: pip install --no-build-isolation ."
    )

HERE = os.path.dirname(os.path.abspath(__file__))
OWN_INCLUDE_DIRS = [os.path.join(HERE, "csrc"), os.path.join(HERE, "csrc", "include")]
DEFAULT_ARCHS = "8.0;9.0+PTX"
# Named in every compile command: ninja rebuilds an object whose command changed, so objects
# left in build/ by another torch are never linked into this one's extension (file times
# alone can miss it, e.g. a checkout copied in with its build/ folder).
TORCH_TAG = f"-DAIGC_FAST_BUILT_AGAINST_TORCH={re.sub(r'[^0-9A-Za-z_.+]', '_', torch.__version__)}"
# The C++ compiler torch's build runs (cpp_extension reads CXX the same way).
CXX = os.environ.get("CXX", "c++")
CXX_FLAGS = [
    "-O3",
    # No debug info (Python's own flags ask for -g): a 61 MB binary becomes 7 MB. A -g in
    # the user's CFLAGS keeps it.
    *([] if "-g" in os.environ.get("CFLAGS", "").split() else ["-g0"]),
    TORCH_TAG,
    "-fno-math-errno",  # sqrtf and friends may vectorize
    "-fno-trapping-math",  # selects between computed values may vectorize
    "-ffp-contract=off",  # no implicit FMA: CPU math stays bit-identical to CUDA's
]
# Flags that speed the kernels up but that not every compiler takes: clang lacks the first;
# Apple's clang, and clang without libomp-dev, the second. Tried when the extension is built
# (BuildExtension); each is left out, with a note, if the compiler refuses it. The kernels
# compute the same bits either way.
OPTIONAL_FLAGS = [
    # (flag, whether the linker needs it too, what leaving it out costs)
    # An `omp simd` loop is vectorized: we measured, g++ guesses.
    ("-fsimd-cost-model=unlimited", False, "the compiler's cost model decides which loops are vectorized"),
    # at::parallel_for is inline OpenMP: without it the CPU kernels run on one thread. With
    # g++ this links libgomp.so.1 by soname: the copy torch ships and has already loaded,
    # so one OpenMP runtime (and torch.set_num_threads) governs torch's loops and ours.
    ("-fopenmp", True, "the CPU kernels run on ONE thread (g++, or clang with libomp-dev, builds them threaded)"),
]
# Without -fopenmp, this still honours the kernels' `omp simd` loops (no runtime needed).
OPENMP_SIMD_ONLY = "-fopenmp-simd"
PROBE_SOURCE = """
#ifdef _OPENMP
#include <omp.h>
#endif
extern "C" int aigc_fast_probe(const float* x, int n);
extern "C" int aigc_fast_probe(const float* x, int n) {
  float s = 0;
#pragma omp parallel for simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += x[i];
#ifdef _OPENMP
  s += static_cast<float>(omp_get_max_threads());
#endif
  return static_cast<int>(s);
}
"""


def _compiler_accepts(flag, link):
    """Whether CXX builds with this flag a small OpenMP-style library it builds without it
    (so a flag is refused only for itself, not for a broken setup), and, for a link flag,
    whether the library then loads (its runtime found). The user's CPPFLAGS, CFLAGS and
    LDFLAGS take part, as in the real build."""
    user_flags = [f for var in ("CPPFLAGS", "CFLAGS", "LDFLAGS") for f in shlex.split(os.environ.get(var, ""))]
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "probe.cpp")
        with open(source, "w") as f:
            f.write(PROBE_SOURCE)

        def builds(extra):
            library = os.path.join(tmp, f"probe{len(extra)}.so")
            command = [*shlex.split(CXX), *user_flags, *extra, "-shared", "-fPIC", source, "-o", library]
            try:
                if subprocess.run(command, capture_output=True).returncode != 0:
                    return False
            except OSError:  # no such compiler: torch's build says so itself
                return False
            if link:
                try:
                    ctypes.CDLL(library)
                except OSError:
                    return False
            return True

        return builds([flag]) or not builds([])


def _is_clang():
    try:
        return "clang" in subprocess.run([*shlex.split(CXX), "--version"], capture_output=True, text=True).stdout
    except OSError:
        return False


def _optional_flags():
    """(compile flags, link flags) of OPTIONAL_FLAGS that CXX takes, with a note for each
    one it refuses."""
    if _is_clang():
        print("aigc_fast: building with clang: the kernels are correct, but without per-CPU clones (g++ only) and "
              "without FMA in baseline x86-64, a g++ build measured 3-14x faster; CXX=g++ builds the fast ones "
              "(CFLAGS=-march=native narrows the gap, for this CPU only)", file=sys.stderr)
    compile_flags, link_flags = [], []
    for flag, link, without_it in OPTIONAL_FLAGS:
        if _compiler_accepts(flag, link):
            compile_flags.append(flag)
            link_flags += [flag] if link else []
            continue
        if flag == "-fopenmp" and _compiler_accepts(OPENMP_SIMD_ONLY, False):
            compile_flags.append(OPENMP_SIMD_ONLY)
            without_it += f"; their `omp simd` loops are still vectorized ({OPENMP_SIMD_ONLY})"
        print(f"aigc_fast: {CXX} refuses {flag}, so it is left out: {without_it}", file=sys.stderr)
    return compile_flags, link_flags


NVCC_FLAGS = ["-O3", "--fmad=false", "-DAIGC_FAST_WITH_CUDA", TORCH_TAG]


class CudaSetupError(Exception):
    """Why the CUDA kernels cannot be built as asked: raised by the build step alone, so
    that an sdist or pip's metadata steps never fail on this machine's CUDA setup."""


def _cuda_wanted():
    """True/False for AIGC_FAST_CUDA=1/0; None means decide from what is installed."""
    value = os.environ.get("AIGC_FAST_CUDA", "").strip()
    if value in ("", "auto"):
        return None
    if value in ("0", "1"):
        return value == "1"
    raise CudaSetupError(f"AIGC_FAST_CUDA must be 0, 1, auto or unset, got {value!r}")


def _nvcc_version(cuda_home):
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    done = subprocess.run([nvcc, "--version"], capture_output=True, text=True)
    if done.returncode != 0:
        raise CudaSetupError(f"`{nvcc} --version` failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    out = done.stdout
    match = re.search(r"release (\d+)\.(\d+)", out)
    if not match:
        raise CudaSetupError(f"could not read the CUDA version from `{nvcc} --version`:\n{out}")
    return match.group(1), match.group(2)


def _configure_cuda_build() -> bool:
    """Whether the CUDA kernels are built: True sets TORCH_CUDA_ARCH_LIST for the build;
    CudaSetupError when AIGC_FAST_CUDA=1 asks for what this environment cannot do, or when
    nvcc's CUDA would not match torch's."""
    wanted = _cuda_wanted()
    cuda_home = cpp_extension.CUDA_HOME
    problems = []
    if torch.version.cuda is None:
        # (torch's CUDA_HOME is then None, whether nvcc is installed or not: not looked for.)
        problems.append(f"torch {torch.__version__} is a CPU-only build (install a CUDA build of torch)")
    # torch's CUDA_HOME may be /usr/local/cuda without a compiler (a runtime-only image).
    elif cuda_home is None or not os.path.isfile(os.path.join(cuda_home, "bin", "nvcc")):
        problems.append(f"CUDA_HOME={os.environ['CUDA_HOME']} has no bin/nvcc" if os.environ.get("CUDA_HOME")
                        else "nvcc was not found (put it on PATH or set CUDA_HOME)")
    if problems:
        if wanted:
            raise CudaSetupError("AIGC_FAST_CUDA=1 but CUDA kernels cannot be built: " + "; ".join(problems))
        return False
    if wanted is False:
        return False
    nvcc_major, nvcc_minor = _nvcc_version(cuda_home)
    torch_major = torch.version.cuda.split(".")[0]
    if nvcc_major != torch_major:
        raise CudaSetupError(
            f"nvcc is CUDA {nvcc_major}.{nvcc_minor} but torch {torch.__version__} was built with "
            f"CUDA {torch.version.cuda}; kernels built this way would not load. Install an nvcc "
            f"with CUDA {torch_major}.x (or a torch built for CUDA {nvcc_major}), or build without "
            "CUDA kernels: set AIGC_FAST_CUDA=0 for the install"
        )
    # torch reads the list split on ";" and spaces, and an empty entry ("8.0; 9.0", a
    # trailing ";") fails there as "Unknown CUDA arch ()": dropped here.
    archs = [a for a in re.split(r"[;\s]+", os.environ.get("TORCH_CUDA_ARCH_LIST", "")) if a]
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)
    if not archs:
        # Named here rather than left to torch, so _build_info.json records what was built
        # and a binary moved to another GPU falls back instead of failing at launch.
        os.environ["TORCH_CUDA_ARCH_LIST"] = _visible_archs() if torch.cuda.is_available() else DEFAULT_ARCHS
    return True


def _visible_archs():
    """What torch builds when the list is unset and GPUs are visible: each visible GPU's
    architecture (capped at the newest this torch supports), oldest first, PTX for the
    newest."""
    supported = [int(a[3:]) for a in torch.cuda.get_arch_list() if a.startswith("sm_") and a[3:].isdigit()]
    newest = max(((sm // 10, sm % 10) for sm in supported), default=(99, 9))
    archs = sorted({min(torch.cuda.get_device_capability(i), newest) for i in range(torch.cuda.device_count())})
    return ";".join("%d.%d" % a for a in archs) + "+PTX"


@functools.lru_cache(maxsize=None)
def _nvcc_dryrun():
    """What nvcc would run for a .cu file: its own include and library folders among it."""
    nvcc = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
    return subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True).stderr


def _nvcc_dirs(variable, flag):
    """The folders nvcc itself passes with `flag` in its `variable` (INCLUDES, LIBRARIES):
    nvcc may be a wrapper script far from its toolkit, so CUDA_HOME is not always right."""
    dirs = []
    for line in re.findall(rf"\b{variable}=(.*)", _nvcc_dryrun()):  # (\b: INCLUDES is not SYSTEM_INCLUDES)
        dirs += re.findall(rf'{flag}"?\s*"?([^"\s]+)"?', line)
    return [os.path.normpath(d) for d in dirs if os.path.isdir(d)]


def _nvcc_library_dirs():
    """Where nvcc links the CUDA runtime from (not its stubs)."""
    return [d for d in _nvcc_dirs("LIBRARIES", "-L") if not d.endswith("stubs")]


def _wheel_cuda_includes():
    """Headers of the CUDA libraries torch ships as wheels (nvidia/cuXX/include for torch's
    CUDA major), for toolkits that carry only the runtime headers: only those the toolkit
    lacks (cuBLAS, cuSPARSE, cuSOLVER, ... which torch's CUDA headers include), linked into a
    folder of their own. The whole wheel folder would put the wheel's runtime headers ahead
    of nvcc's own, and where the wheel's CUDA minor is newer than nvcc's (torch 2.15's 13.2
    under nvcc 13.0) nvcc's headers stop the build: "CUDA compiler and CUDA toolkit headers
    are incompatible"."""
    site = os.path.dirname(os.path.dirname(torch.__file__))
    major = torch.version.cuda.split(".")[0]
    wheel = os.path.join(site, "nvidia", f"cu{major}", "include")
    if not os.path.isdir(wheel):
        return []
    toolkit = set()
    for folder in _nvcc_dirs("INCLUDES", "-I") + _nvcc_dirs("SYSTEM_INCLUDES", "-isystem"):
        toolkit.update(os.listdir(folder))
    shim = os.path.join(HERE, "build", f"cuda-wheel-headers-cu{major}")
    shutil.rmtree(shim, ignore_errors=True)  # another torch's links from an earlier build
    os.makedirs(shim)
    for name in sorted(set(os.listdir(wheel)) - toolkit):
        source, link = os.path.join(wheel, name), os.path.join(shim, name)
        try:
            os.symlink(source, link)
        except OSError:  # a file system without symbolic links
            (shutil.copytree if os.path.isdir(source) else shutil.copy2)(source, link)
    return [shim]


def _extension(with_cuda):
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    include_dirs = list(OWN_INCLUDE_DIRS)
    if not with_cuda:
        return cpp_extension.CppExtension(
            "aigc_fast._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": CXX_FLAGS},
        )
    # (The folders nvcc reads and the wheel headers it lacks are added by BuildExtension:
    # finding them runs nvcc's dry run and writes into build/, which pip's metadata steps
    # must not.)
    return cpp_extension.CUDAExtension(
        "aigc_fast._C",
        sources + sorted(glob.glob("csrc/cuda/*.cu")),
        include_dirs=include_dirs,
        extra_compile_args={"cxx": CXX_FLAGS + ["-DAIGC_FAST_WITH_CUDA"], "nvcc": NVCC_FLAGS},
    )


def _builds_cuda(extension):
    """Whether an extension compiles CUDA kernels: by its sources, since torch adds an empty
    "nvcc" entry to every extension's flags (a second build of the same extensions would
    take a CPU one for CUDA)."""
    return any(str(source).endswith(".cu") for source in extension.sources)


class BuildExtension(cpp_extension.BuildExtension):
    """torch's build, plus what takes running the compilers or writing into build/ (here, so
    that only a build does it, not pip's metadata steps): the OPTIONAL_FLAGS the C++
    compiler takes, nvcc's own folders and the CUDA wheel headers it lacks; and
    _build_info.json beside the binary: the torch it was built against, so `import
    aigc_fast` can refuse a stale or mismatched binary before loading it."""

    def build_extensions(self):
        if CUDA_SETUP_ERROR is not None:
            sys.exit(CUDA_SETUP_ERROR)
        compile_flags, link_flags = _optional_flags()
        for extension in self.extensions:
            extension.extra_compile_args["cxx"] = extension.extra_compile_args["cxx"] + compile_flags
            extension.extra_link_args = extension.extra_link_args + link_flags
            if _builds_cuda(extension):
                # Right after the package's own folders, ahead of torch's and CUDA_HOME's (a
                # CUDA_HOME other than nvcc's toolkit may hold another CUDA's cuBLAS headers).
                own = len(OWN_INCLUDE_DIRS)
                wheel = [d for d in _wheel_cuda_includes() if d not in extension.include_dirs]
                extension.include_dirs[own:own] = wheel
                nvcc = [d for d in _nvcc_library_dirs() if d not in extension.library_dirs]
                extension.library_dirs[:0] = nvcc  # ahead of CUDA_HOME's
        super().build_extensions()

    def finalize_options(self):
        super().finalize_options()
        # setuptools skips an extension whose binary is newer than its .cpp/.cu files,
        # blind to headers, flags and the torch it builds against: without ninja (which
        # tracks all of that itself) an old binary would ship under new build facts.
        self.force = True

    def run(self):
        super().run()
        with_cuda = any(_builds_cuda(e) for e in self.extensions)
        binary = self.get_ext_fullpath("aigc_fast._C")
        info = {
            "package_version": VERSION,
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cuda": with_cuda,
            "cuda_archs": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
        }
        path = os.path.join(os.path.dirname(binary), "_build_info.json")
        with open(path, "w") as f:
            json.dump(info, f, indent=2)


# torch runs the `ninja` it finds on PATH; a virtual environment's own (the build
# requirement) is beside its python, which is on PATH only when the environment is active.
# Without ninja the build is serial and ignores MAX_JOBS. Appended, and only then: that
# folder may hold other compilers (a conda env's g++), which must not take precedence.
_ninja_beside_python = os.path.join(os.path.dirname(sys.executable), "ninja")
if shutil.which("ninja") is None and os.access(_ninja_beside_python, os.X_OK):
    os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + os.path.dirname(sys.executable)

with open(os.path.join(HERE, "aigc_fast", "_version.py")) as version_file:
    VERSION = re.search(r"\"(.+)\"", version_file.read()).group(1)
try:
    WITH_CUDA, CUDA_SETUP_ERROR = _configure_cuda_build(), None
except CudaSetupError as error:
    WITH_CUDA, CUDA_SETUP_ERROR = False, f"error: {error}"

setup(
    version=VERSION,
    # Here, not in pyproject.toml: setuptools deprecates [project]'s license table (builds stop
    # being supported after 2027-02), and the SPDX string replacing it needs setuptools >= 77,
    # which an environment building with --no-build-isolation may not have. This keyword
    # works on every setuptools from 64 on, with no warning.
    license="Apache-2.0",
    ext_modules=[_extension(WITH_CUDA)],
    cmdclass={"build_ext": BuildExtension},
)
