"""What this CPU computes natively, read from the operating system at run time.

Reduced precision is only fast where the hardware has it: bfloat16 needs AVX512_BF16 or AMX
on x86 (elsewhere it is emulated, and slower than float32). The flags are read, never guessed
from the vendor or the model name.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: x86 flags (Linux /proc/cpuinfo names) that compute bfloat16 natively.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class CpuFeatures:
    """name: the CPU's model name; flags: lower-case feature names as Linux spells them;
    source: where they were read ('/proc/cpuinfo', 'sysctl', 'openvino' or 'unknown')."""

    name: str
    flags: frozenset
    source: str

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def amx(self) -> bool:
        return "amx_tile" in self.flags or "amx_bf16" in self.flags

    @property
    def native_bf16(self) -> bool:
        return any(flag in self.flags for flag in NATIVE_BF16_FLAGS)

    def describe(self) -> str:
        """E.g. 'AMD EPYC (AVX2; AVX-512 no, BF16 no, AMX no)'."""
        vector = "AVX-512" if self.avx512 else "AVX2" if "avx2" in self.flags else "no AVX2"
        def yes(value: bool) -> str:
            return "yes" if value else "no"
        return (f"{self.name} ({vector}; AVX-512 {yes(self.avx512)}, BF16 {yes(self.native_bf16)}, "
                f"AMX {yes(self.amx)}; flags from {self.source})")


def parse_cpuinfo(text: str) -> tuple[str, frozenset]:
    """(model name, flags) of the first processor in a Linux /proc/cpuinfo text."""
    name, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and not name:
            name = value
        elif key == "flags" and not flags:
            flags = frozenset(value.lower().split())
        if name and flags:
            break
    return name, flags


@lru_cache(maxsize=1)
def detect_cpu_features() -> CpuFeatures:
    """This machine's CPU features (read once per process)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        name, flags = parse_cpuinfo(cpuinfo.read_text(encoding="utf-8", errors="replace"))
        if flags:
            return CpuFeatures(name or platform.processor(), flags, "/proc/cpuinfo")
    if platform.system() == "Darwin":
        return _darwin_features()
    return _openvino_features()


def _darwin_features() -> CpuFeatures:
    def sysctl(key: str) -> str:
        try:
            return subprocess.run(["sysctl", "-n", key], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    name = sysctl("machdep.cpu.brand_string") or platform.machine()
    flags = set(sysctl("machdep.cpu.features").lower().split())
    flags |= set(sysctl("machdep.cpu.leaf7_features").lower().split())
    if sysctl("hw.optional.arm.FEAT_BF16") == "1":
        flags.add("arm_bf16")  # Apple silicon: not one of NATIVE_BF16_FLAGS (x86 only here)
    return CpuFeatures(name, frozenset(flags), "sysctl")


def _openvino_features() -> CpuFeatures:
    """Windows and others: OpenVINO's own reading of the CPU, if it is installed."""
    try:
        import openvino

        core = openvino.Core()
        capabilities = {str(c).upper() for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")}
        name = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
    except Exception:  # not installed, or no CPU plugin: nothing is known
        return CpuFeatures(platform.processor() or platform.machine(), frozenset(), "unknown")
    flags = {"avx512_bf16"} if "BF16" in capabilities else set()
    return CpuFeatures(name, frozenset(flags), "openvino")


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
