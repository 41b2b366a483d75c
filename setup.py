"""Build kvmscope: compile the Cython core in pyx/ and assemble the guest programs."""
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
GUEST_SRC = os.path.join("pyx", "guests")


def load_board():
    """pyx/board.py, loaded by path: the package itself is not importable before it is built."""
    spec = importlib.util.spec_from_file_location("kvmscope_board", os.path.join(HERE, "pyx", "board.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The board is defined once, in pyx/board.py; its guest include (pyx/guests/board.inc) and
# the core's constants (pyx/board.pxi) are generated here, before cythonize and the guests.
BOARD = load_board()
BOARD.write_generated(HERE)
GUEST_LOAD_ADDR = f"{BOARD.CODE_ADDR:#x}"


def assemble_guest(src, out_bin):
    """Assemble one guest .S into a flat binary with the GNU assembler and linker."""
    for tool in ("as", "ld"):
        if shutil.which(tool) is None:
            sys.exit(f"kvmscope build: '{tool}' not found: install GNU binutils (apt-get install binutils)")
    with tempfile.TemporaryDirectory() as tmp:
        obj = os.path.join(tmp, "guest.o")
        subprocess.run(["as", "--32", "-I", GUEST_SRC, "-o", obj, src], check=True)
        subprocess.run(["ld", "-m", "elf_i386", "-N", "-e", "_start", f"-Ttext={GUEST_LOAD_ADDR}",
                        "--oformat", "binary", "-o", out_bin, obj], check=True)


def assemble_qemu_guest(src, out_elf):
    """Assemble one guest for QEMU (pyx/guests/qemu/*.S) into a multiboot ELF kernel at 1 MiB."""
    qemu_src = os.path.join(GUEST_SRC, "qemu")
    with tempfile.TemporaryDirectory() as tmp:
        obj = os.path.join(tmp, "guest.o")
        subprocess.run(["as", "--32", "-I", qemu_src, "-o", obj, src], check=True)
        subprocess.run(["ld", "-m", "elf_i386", "-T", os.path.join(qemu_src, "link.ld"),
                        "-o", out_elf, obj], check=True)


class BuildPyWithGuests(build_py):
    """build_py that also assembles pyx/guests/*.S into kvmscope/guests/*.bin,
    and pyx/guests/qemu/*.S into kvmscope/guests/qemu/*.elf."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            out_dir = GUEST_SRC           # editable install: the package is pyx/ itself
        else:
            out_dir = os.path.join(self.build_lib, "kvmscope", "guests")
        os.makedirs(out_dir, exist_ok=True)
        for src in sorted(glob.glob(os.path.join(GUEST_SRC, "*.S"))):
            name = os.path.splitext(os.path.basename(src))[0]
            assemble_guest(src, os.path.join(out_dir, name + ".bin"))
        os.makedirs(os.path.join(out_dir, "qemu"), exist_ok=True)
        for src in sorted(glob.glob(os.path.join(GUEST_SRC, "qemu", "*.S"))):
            name = os.path.splitext(os.path.basename(src))[0]
            assemble_qemu_guest(src, os.path.join(out_dir, "qemu", name + ".elf"))


def sanitizer_flags():
    """Compile and link flags of KVMSCOPE_SANITIZE=1: AddressSanitizer and UBSan (docs/testing.md)."""
    if os.environ.get("KVMSCOPE_SANITIZE") != "1":
        return [], []
    flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1"]
    return flags, flags


def extensions():
    from Cython.Build import cythonize
    import numpy
    san_compile, san_link = sanitizer_flags()
    ext = Extension(
        "kvmscope._core",
        ["pyx/_core.pyx"],
        include_dirs=["pyx/includes", "pyx", numpy.get_include()],
        extra_compile_args=["-O2", "-Wno-unused-function", "-Wno-unused-variable"] + san_compile,
        extra_link_args=san_link,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                       ("KS_DEBUG", "1" if os.environ.get("KVMSCOPE_DEBUG") == "1" else "0")],
    )
    # sanitizer reports name .pxi lines instead of lines of the generated C
    return cythonize([ext], include_path=["pyx"], language_level=3, emit_linenums=bool(san_compile),
                     compiler_directives={"embedsignature": True})


#: The ``runs`` extra: kvmscope sql, history, --scheduler (docs/runs.md).
RUNS = ["duckdb>=1.1", "ruptures>=1.1.9", "dask[dataframe]>=2024.8", "distributed>=2024.8"]

setup(
    name="kvmscope",
    version="0.1.0",
    description="Trace and replay lock contention inside a KVM virtual machine monitor",
    python_requires=">=3.9",
    packages=["kvmscope", "kvmscope.analysis"],
    package_dir={"kvmscope": "pyx", "kvmscope.analysis": "analysis"},
    ext_modules=extensions(),
    cmdclass={"build_py": BuildPyWithGuests},
    install_requires=[
        "numpy>=1.24",
        "pyarrow>=14",
        "pandas>=2.0",
        "matplotlib>=3.7",
        "scipy>=1.11",
        "rich>=13",
    ],
    extras_require={
        # nbclient + ipykernel execute the notebooks in the test suite
        # cython, setuptools and wheel: the sanitizer test builds a copy of the core offline
        # many runs: SQL (DuckDB), change points (ruptures), Dask and its cluster
        "runs": RUNS,
        # polars: a test opens the Parquet layout with it
        "test": ["pytest>=7", "nbclient>=0.7", "nbformat>=5", "ipykernel>=6",
                 "cython>=3.0", "setuptools>=68", "wheel", "polars>=1.0"] + RUNS,
    },
    entry_points={"console_scripts": ["kvmscope = kvmscope.cli:main"]},
    zip_safe=False,
)
