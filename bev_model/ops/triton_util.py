"""Triton plumbing shared by the fused ops: interpreter detection, kernel selection and ahead-of-time builds.

Kernels are plain functions wrapped as ``JITFunction`` objects (CUDA launches, ahead-of-time compilation with
``compile_jit``); when the process imported Triton with ``TRITON_INTERPRET=1`` ``kernel_for`` returns the
interpreted function instead (CPU tensors too; slow, for tests).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction


def interpreter_active() -> bool:
    """True when Triton was imported with ``TRITON_INTERPRET=1`` (its standard library is then interpreted).

    The variable must be set before the first ``import triton`` of the process: ``tl.sum`` and friends
    are built at import time, for one mode only.
    """
    return isinstance(tl.standard.sum, InterpretedFunction)


@functools.cache
def _interpreted(fn):
    return InterpretedFunction(fn)


def device_guard(device: torch.device):
    """Launch on the tensors' GPU (Triton launches on the current CUDA device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def kernel_for(jit_fn: JITFunction, device: torch.device):
    """The compiled kernel for CUDA tensors; the interpreter when Triton runs in interpreter mode."""
    if interpreter_active():
        return _interpreted(jit_fn.fn)
    if device.type != "cuda":
        raise RuntimeError(
            f"backend 'triton' got tensors on {device}: it needs CUDA tensors, or TRITON_INTERPRET=1 set in the "
            "environment before triton is first imported (CPU interpreter, slow; for tests)"
        )
    return jit_fn


def compile_jit(
    jit_fn: JITFunction,
    signature: dict[str, str],
    constexprs: dict[str, int],
    arch: int,
    num_warps: int,
    divisible_by_16: set[str] | frozenset[str] = frozenset(),
):
    """Compile ``jit_fn`` to PTX and cubin for ``sm_{arch}`` without a GPU (needs ptxas, shipped with triton).

    ``signature`` maps every argument to its Triton type (``"*fp16"``, ``"i32"``, ``"constexpr"``);
    ``constexprs`` gives the constexpr values. Specialised as the JIT would: every pointer 16-byte aligned,
    and the integer arguments named in ``divisible_by_16`` divisible by 16 (that lets loads vectorise).
    Returns Triton's ``CompiledKernel`` (``.asm["ptx"]``, ``.asm["cubin"]``).
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    if interpreter_active():
        raise RuntimeError("AOT compilation needs a process where triton was imported without TRITON_INTERPRET=1")
    aligned = {name for name, ty in signature.items() if ty.startswith("*")} | set(divisible_by_16)
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(signature) if name in aligned}
    src = ASTSource(fn=jit_fn, signature=signature, constexprs=dict(constexprs), attrs=attrs)
    target = GPUTarget("cuda", arch, 32)
    options = make_backend(target).parse_options({"num_warps": num_warps})
    return triton.compile(src, target=target, options=options.__dict__)


def resource_usage(cubin: bytes) -> dict[str, int]:
    """Registers, stack (spill) bytes and shared memory of a cubin, read with the ``cuobjdump`` shipped with triton."""
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    found = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return {k.lower(): int(v) for k, v in found.items()}
