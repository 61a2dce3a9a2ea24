"""The engines keep freed memory for reuse (glibc only), and a person can turn that off."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the setting is glibc's"
)

# Allocate and free a 64 MiB block twenty times, as an engine does with its feature
# maps, and print the page faults that took. A torch tensor, not a numpy array: numpy
# asks the kernel for huge pages, which fault in 2 MiB at a time and hide the churn.
_CHURN = """
import resource, torch
from napari_kaizen.engines._common.allocator import keep_freed_memory
applied = keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    a = torch.ones(16 << 20)
    del a
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _churn(opt_out: bool) -> tuple[bool, int]:
    env = dict(os.environ)
    env.pop("NAPARI_KAIZEN_SYSTEM_MALLOC", None)
    if opt_out:
        env["NAPARI_KAIZEN_SYSTEM_MALLOC"] = "1"
    out = subprocess.run([sys.executable, "-c", _CHURN], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@glibc_only
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    applied, kept = _churn(opt_out=False)
    declined, system = _churn(opt_out=True)
    assert applied and not declined
    # 20 blocks of 16,384 pages: glibc's default maps each afresh (about 330,000 faults);
    # kept, the first block faults in and later ones mostly reuse it (this VM's kernel
    # reclaims some idle pages itself: 16,000-131,000 faults measured).
    assert system > 20 * 16_384 * 0.8
    assert kept < system / 2


def test_opting_out_leaves_malloc_alone_and_the_answer_is_stable(monkeypatch):
    from napari_kaizen.engines._common import allocator

    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv(allocator.OPT_OUT, "1")
    assert allocator.keep_freed_memory() is False
    monkeypatch.delenv(allocator.OPT_OUT)
    # Decided once per process: the first answer stands.
    assert allocator.keep_freed_memory() is False
