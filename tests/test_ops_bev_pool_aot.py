"""Every ``bev_pool_v2`` Triton kernel variant builds ahead of time to PTX and cubin for A100 (sm_80) and H100
(sm_90), no GPU needed: the segment kernel (forward, and the feature gradient over feature-sorted points) and the
depth-gradient kernel, in fp32/fp16/bf16."""

from __future__ import annotations

import itertools
import re

import pytest

from bev_model.ops.bev_pool_triton import KINDS, compile_variant
from bev_model.ops.triton_util import interpreter_active, resource_usage

DTYPES = ("fp32", "fp16", "bf16")
ARCHS = (80, 90)
KERNEL_NAMES = {"segment": "bev_pool_segment_kernel", "depth_grad": "bev_pool_depth_grad_kernel"}


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch, tmp_path):
    """A private, empty Triton cache: every variant is really compiled, not read back."""
    if interpreter_active():
        pytest.skip("this process imported triton with TRITON_INTERPRET=1; AOT compilation needs the compiler")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))


def _check(kind: str, dtype: str, arch: int, channels: int) -> None:
    kernel = compile_variant(kind, dtype, arch, channels)
    ptx = kernel.asm["ptx"]
    assert f".entry {KERNEL_NAMES[kind]}" in ptx
    assert f".target sm_{arch}" in ptx  # sm_90 builds as sm_90a
    cubin = kernel.asm["cubin"]
    assert cubin[:4] == b"\x7fELF" and len(cubin) > 1000
    usage = resource_usage(cubin)
    assert 0 < usage["reg"] <= 255
    assert usage["stack"] == 0, f"{kind} {dtype} sm_{arch} C={channels} spills registers: {usage}"
    # each interval / point owns its output: plain stores, no atomics
    assert not re.findall(r"^\s*(?:@!?%p\d+\s+)?(?:atom|red)\.", ptx, flags=re.M)
    if dtype != "fp32":
        # loads of the low-precision inputs, fp32 math
        assert (".b16" in ptx or ".u16" in ptx) and ".f32" in ptx


@pytest.mark.parametrize("kind, dtype, arch", list(itertools.product(KINDS, DTYPES, ARCHS)))
def test_kernel_variant_compiles_for_sm80_and_sm90(kind, dtype, arch):
    _check(kind, dtype, arch, channels=80)


@pytest.mark.slow
@pytest.mark.parametrize("channels", [64, 19, 256])
@pytest.mark.parametrize("kind, dtype, arch", list(itertools.product(KINDS, DTYPES, ARCHS)))
def test_kernel_variant_compiles_other_channel_counts(kind, dtype, arch, channels):
    _check(kind, dtype, arch, channels)
