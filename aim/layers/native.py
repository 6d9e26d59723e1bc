"""Native CPU kernels, built on first use: the AFM / IFM pair term (``csrc/attentive_pair_sum.cpp``), an MLP
hidden layer's batch norm, ReLU and dropout, and dropout alone (``csrc/batch_norm_relu_dropout.cpp``), an
embedding lookup's backward (``csrc/index_add_rows.cpp``), AutoInt's attention over a row's fields
(``csrc/field_attention.cpp``), the order-2 search's vector kernel over every pair (``csrc/vector_pairs.cpp``)
and the retrained AIM's folded forward (``csrc/folded_logits.cpp``).

The torch version of the fused pair term (``attention._AttentivePairSum``) is about 25 small ops per chunk of
rows; at Frappe's shapes it reached 2-3.5x DeepCTR-Torch's AFM, short of the model issue's 5x. The C++ kernel
does a row's pairs in registers. It has no torch headers and is called through ctypes, so it builds in about a
second with the system's C++ compiler. It is compiled for the CPU it runs on (``-march=native``), so the build
is cached per source, compiler and CPU (the file name is a hash of the three) in ``$AIM_NATIVE_CACHE``, else
``$XDG_CACHE_HOME/aim-ctr``, else ``~/.cache/aim-ctr``.

Without a compiler, or when the build fails, ``pair_kernel()``, ``mlp_kernel()``, ``rows_kernel()``,
``attention_kernel()``, ``vector_pairs_kernel()`` and ``folded_kernel()`` warn once and return None, and the layer
keeps the torch path.
``AIM_NATIVE=0`` turns the kernels off (the torch path is then the reference the tests compare the kernels with).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch  # loaded before any kernel, so that a kernel shares torch's libgomp (one OpenMP runtime)

SOURCE = Path(__file__).with_name("csrc") / "attentive_pair_sum.cpp"
MLP_SOURCE = Path(__file__).with_name("csrc") / "batch_norm_relu_dropout.cpp"
ROWS_SOURCE = Path(__file__).with_name("csrc") / "index_add_rows.cpp"
ATTENTION_SOURCE = Path(__file__).with_name("csrc") / "field_attention.cpp"
VECTOR_PAIRS_SOURCE = Path(__file__).with_name("csrc") / "vector_pairs.cpp"
FOLDED_SOURCE = Path(__file__).with_name("csrc") / "folded_logits.cpp"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC"]

_P, _INT, _I64, _U32, _U64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_uint32, ctypes.c_uint64
_BOOL = ctypes.c_bool
_F32, _F64 = ctypes.c_float, ctypes.c_double
# The element types each kernel takes, as the suffixes of its entry points' names (aim_bnrd_forward_bf16, ...).
FLOAT_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}  # the MLP's and AutoInt's kernels
PAIR_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}  # AFM's and IFM's pair kernel
# (emb, left, right, wt, bias, score, values, mask, keep, temperature, batch, n, m, d, t, threads,
#  out, weights, pair_values)
_PAIR_FORWARD = [_P] * 9 + [_F64] + [_I64] * 5 + [_INT] + [_P] * 3
# (emb, left, right, wt, bias, score, values, keep, temperature, batch, n, m, d, t, threads,
#  grad, weights, pair_values, grad_emb, slots, grad_params)
_PAIR_BACKWARD = [_P] * 8 + [_F64] + [_I64] * 5 + [_INT] + [_P] * 6
PAIR_SIGNATURES = {f"aim_pair_{way}_{suffix}": types for way, types in (("forward", _PAIR_FORWARD),
                                                                        ("backward", _PAIR_BACKWARD))
                   for suffix in PAIR_SUFFIX.values()}
MLP_SIGNATURES = {
    # (z, gamma, beta, key, drop, scale, eps, batch, width, threads, y, mean, rstd, var)
    **{f"aim_bnrd_forward_{t}": [_P] * 3 + [_U64, _U32, _F32, _F64, _I64, _I64, _INT] + [_P] * 4
       for t in FLOAT_SUFFIX.values()},
    # (dy, y, z, mean, rstd, gamma, scale, batch, width, threads, dz, dgamma, dbeta)
    **{f"aim_bnrd_backward_{t}": [_P] * 6 + [_F32, _I64, _I64, _INT] + [_P] * 3 for t in FLOAT_SUFFIX.values()},
    # (x, w, b, batch, width, threads, out) and (x, w, g, batch, width, threads, dx, dw)
    **{f"aim_unit_forward_{t}": [_P, _P, _F32, _I64, _I64, _INT, _P] for t in FLOAT_SUFFIX.values()},
    **{f"aim_unit_backward_{t}": [_P] * 3 + [_I64, _I64, _INT, _P, _P] for t in FLOAT_SUFFIX.values()},
    # (x or null, key, drop, scale, first index, n, threads, out)
    "aim_dropout": [_P, _U64, _U32, _F32, _U64, _I64, _INT, _P],
}
ATTENTION_SIGNATURES = {
    # (x, weight, batch, fields, in_dim, heads, head_dim, residual, relu, scale, threads, out, attn)
    **{f"aim_field_attention_forward_{t}": [_P, _P] + [_I64] * 5 + [_BOOL, _BOOL, _F32, _INT, _P, _P]
       for t in FLOAT_SUFFIX.values()},
    # (x, weight, attn, out, dout, batch, fields, in_dim, heads, head_dim, residual, relu, scale, threads, dx,
    #  dweight, slots)
    **{f"aim_field_attention_backward_{t}": [_P] * 5 + [_I64] * 5 + [_BOOL, _BOOL, _F32, _INT, _P, _P, _P]
       for t in FLOAT_SUFFIX.values()},
}
VECTOR_PAIRS_SIGNATURES = {
    "aim_vector_pairs_forward": [_P, _P, _I64, _I64, _I64, _INT, _P],  # (e, kernel, batch, n, d, threads, out)
    # (e, kernel, grad, batch, n, d, threads, grad_e, grad_kernel, slots)
    "aim_vector_pairs_backward": [_P, _P, _P, _I64, _I64, _I64, _INT, _P, _P, _P],
}
FOLDED_SIGNATURES = {
    # (tables, table_start, width, mlp_size, mlp_column, codes, n_single, code_column, pooled, batch, fields,
    #  mlp_width, orders, counts, groups, factor_field, factor_column, constant, threads, mlp_in, logits)
    "aim_folded_logits": [_P] * 6 + [_I64, _P, _P, _I64, _I64, _I64, _P, _P, _I64, _P, _P, _F32, _INT, _P, _P],
}
ROWS_SIGNATURES = {f"aim_index_add_rows_{suffix}": [_P, _P, _I64, _I64, _P] for suffix in ("i64", "i32")}

def enabled() -> bool:
    """False when the environment says ``AIM_NATIVE=0`` (or ``false``/``no``/``off``)."""
    return os.environ.get("AIM_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def _cache_dir() -> Path:
    if os.environ.get("AIM_NATIVE_CACHE"):
        return Path(os.environ["AIM_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aim-ctr"


def _cpu_signature() -> str:
    """The CPU's model and flags: a binary built with -march=native is only reused on a CPU like this one."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _build(compiler: str, source: Path) -> Path:
    """The shared library for this source, compiler and CPU: from the cache, or compiled into it."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\0".join([source.read_text(), version, " ".join(FLAGS), _cpu_signature()]).encode())
    target = _cache_dir() / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place: processes that build at once never load a half-written file.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run([compiler, *FLAGS, str(source), "-o", str(built)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed on {source}:\n{result.stderr[-2000:]}")
        os.replace(built, target)
    return target


def _load(source: Path, signatures: dict[str, list], what: str, fallback: str) -> ctypes.CDLL | None:
    """``source`` built and loaded with its functions' argument types set (they return nothing), or None with one
    warning naming ``what`` runs as ``fallback`` instead."""
    if not enabled():
        return None
    compiler = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if compiler is None:
        warnings.warn(f"aim: no C++ compiler (g++ or $CXX) found, so {what} runs as {fallback}", RuntimeWarning,
                      stacklevel=3)
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler, source)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        warnings.warn(f"aim: the native kernel {source.name} could not be built or loaded ({err}); {what} runs as "
                      f"{fallback}", RuntimeWarning, stacklevel=3)
        return None
    for name, argtypes in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, None
    return lib


@functools.cache
def pair_kernel() -> ctypes.CDLL | None:
    """The loaded pair kernel, or None (turned off, no compiler, or the build failed: a warning says which).

    Besides its functions it carries the source's two constants: ``max_width``, the largest d and t it takes, and
    ``block_rows``, the rows per gradient slot of the backward (the caller allocates the slots)."""
    lib = _load(SOURCE, PAIR_SIGNATURES, "AFM's and IFM's pair term", "torch ops, about 2x slower on CPU")
    if lib is None:
        return None
    lib.aim_pair_max_width.restype = ctypes.c_int
    lib.aim_pair_block_rows.restype = ctypes.c_int64
    lib.max_width, lib.block_rows = lib.aim_pair_max_width(), lib.aim_pair_block_rows()
    return lib


@functools.cache
def mlp_kernel() -> ctypes.CDLL | None:
    """The loaded kernel of an MLP's hidden layers (batch norm + ReLU + dropout) and of dropout alone, or None (as
    ``pair_kernel``)."""
    return _load(MLP_SOURCE, MLP_SIGNATURES, "the MLP's batch norm, ReLU and dropout", "torch ops")


@functools.cache
def rows_kernel() -> ctypes.CDLL | None:
    """The loaded row-sum kernel of an embedding lookup's backward, or None (as ``pair_kernel``)."""
    return _load(ROWS_SOURCE, ROWS_SIGNATURES, "an embedding lookup's backward", "index_add_")


@functools.cache
def attention_kernel() -> ctypes.CDLL | None:
    """The loaded kernel of AutoInt's self-attention over a row's fields, or None (as ``pair_kernel``)."""
    lib = _load(ATTENTION_SOURCE, ATTENTION_SIGNATURES, "AutoInt's attention", "torch's attention")
    if lib is not None:  # sizes in floats: the softmax weights the forward keeps, the backward's scratch
        for function in (lib.aim_field_attention_buffer, lib.aim_field_attention_slots):
            function.argtypes, function.restype = [_I64, _I64, _I64], _I64
    return lib


@functools.cache
def vector_pairs_kernel() -> ctypes.CDLL | None:
    """The loaded kernel of the vector kernel over every pair of fields (an order-2 search), or None (as
    ``pair_kernel``)."""
    lib = _load(VECTOR_PAIRS_SOURCE, VECTOR_PAIRS_SIGNATURES, "the every-pair vector kernel", "torch ops")
    if lib is not None:  # floats of scratch the backward needs for the kernel's gradient
        lib.aim_vector_pairs_slots.argtypes, lib.aim_vector_pairs_slots.restype = [_I64, _I64, _I64], _I64
    return lib


@functools.cache
def folded_kernel() -> ctypes.CDLL | None:
    """The loaded kernel of the retrained AIM's folded forward, or None (as ``pair_kernel``)."""
    return _load(FOLDED_SOURCE, FOLDED_SIGNATURES, "the retrained AIM's folded forward", "torch ops")
