# Builds shmap._shmap for `pip install --no-build-isolation .` (metadata in pyproject.toml):
# the library's sources (src/) and the binding (python/src/) compiled into one extension
# module with g++ and Debian's headers (pybind11-dev, libcereal-dev, rapidjson-dev,
# libxxhash-dev, python3-dev; scripts/deps.sh installs them). The CMake build
# (SHMAP_BUILD_PYTHON) makes the same module in build/python.
import glob
import os

from setuptools import Extension, setup

here = os.path.dirname(os.path.abspath(__file__))
sources = sorted(glob.glob(os.path.join("src", "*.cpp"))) + ["python/src/shmap_py.cpp"]

setup(
    ext_modules=[
        Extension(
            "shmap._shmap",
            sources=sources,
            include_dirs=["include", "/usr/include/pybind11"],
            language="c++",
            # -ftls-model=initial-exec: see python/CMakeLists.txt.
            extra_compile_args=["-std=c++20", "-mcx16", "-O2", "-DNDEBUG",
                                "-fvisibility=hidden", "-Wno-unused-parameter",
                                "-ftls-model=initial-exec"],
            extra_link_args=["-pthread"],
        )
    ],
    # build-pip: the CMake build uses build/ (scripts/test.sh).
    options={"build": {"build_base": "build-pip"}, "build_ext": {"parallel": 2}},
)
