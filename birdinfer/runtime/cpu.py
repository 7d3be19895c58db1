"""What the CPU really offers the models: ISA flags, oneDNN's ISA cap, the resulting *CPU class*, topology.

OpenVINO's CPU plugin runs its convolutions and matrix products on oneDNN kernels, and oneDNN honours
``ONEDNN_MAX_CPU_ISA`` (older name ``DNNL_MAX_CPU_ISA``), read once when the library first runs: a cap
masks instruction sets the CPU has (it never adds any). The *effective ISA* is therefore the CPU's flags
(``/proc/cpuinfo``) intersected with the cap. Its *class* decides precision and INT8 arithmetic:

================== ============================================== =====================================
class              effective ISA                                  what it means for the models
================== ============================================== =====================================
``amx``            AMX tiles (int8 + bf16), AVX-512               bf16 native; INT8 dot products exact
``avx512_vnni_bf16`` AVX-512 + VNNI + BF16 (Zen 4, Cooper Lake)    bf16 native; INT8 dot products exact
``avx512_vnni``    AVX-512 + VNNI, no BF16 (Ice Lake, Cascade L.) f32; INT8 dot products exact
``avx512``         AVX-512 F/BW/VL/DQ, no VNNI (Skylake-SP:       f32; INT8 u8×s8 pairs summed in int16
                   Kaggle's CPU)                                  can saturate (7-bit weights avoid it)
``avx2_vnni``      AVX2 + AVX-VNNI                                f32; INT8 dot products exact
``avx2``           AVX2 only                                      f32; INT8 can saturate as ``avx512``
================== ============================================== =====================================

:data:`CPU_CLASS_CAPS` maps the classes a benchmark can emulate to the cap that produces them, and
:func:`run_in_cpu_class` runs a function in a child process with that cap set before OpenVINO loads
(a cap set after oneDNN has started has no effect). This module imports no OpenVINO.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import BirdinferError, ParameterError

__all__ = ["ISA_FEATURES", "ONEDNN_ISA_MASKS", "CPU_CLASSES", "CPU_CLASS_CAPS", "INT8_FLAGS", "ISA_FLAGS", "CpuIsa",
           "cpu_flags", "physical_cores", "sibling_groups", "spare_siblings", "isa_cap", "parse_isa_cap", "effective_isa",
           "class_of", "cap_for_class", "emulation_problem", "run_in_cpu_class", "thread_affinities"]

#: oneDNN's ISA feature bits (dnnl_cpu_isa_t is a bit mask of these) and the /proc/cpuinfo flags each needs.
ISA_FEATURES: dict[str, tuple[int, tuple[str, ...]]] = {
    "sse41": (0x1, ("sse4_1",)),
    "avx": (0x2, ("avx",)),
    "avx2": (0x4, ("avx2",)),
    "avx_vnni": (0x8, ("avx_vnni",)),
    "avx2_vnni_2": (0x10, ("avx_vnni_int8", "avx_ne_convert")),
    "avx512_core": (0x20, ("avx512f", "avx512bw", "avx512vl", "avx512dq")),
    "avx512_vnni": (0x40, ("avx512_vnni",)),
    "avx512_bf16": (0x80, ("avx512_bf16",)),
    "avx512_fp16": (0x100, ("avx512_fp16",)),
    "amx_tile": (0x200, ("amx_tile",)),
    "amx_int8": (0x400, ("amx_int8",)),
    "amx_bf16": (0x800, ("amx_bf16",)),
    "amx_fp16": (0x1000, ("amx_fp16",)),
}

#: Values ``ONEDNN_MAX_CPU_ISA`` accepts (oneDNN's ``dnnl_cpu_isa_t``) → feature mask. ``None``: no cap.
ONEDNN_ISA_MASKS: dict[str, int | None] = {
    "DEFAULT": None,
    "ALL": None,
    "SSE41": 0x1,
    "AVX": 0x3,
    "AVX2": 0x7,
    "AVX2_VNNI": 0xF,
    "AVX2_VNNI_2": 0x1F,
    "AVX512_CORE": 0x27,
    "AVX512_CORE_VNNI": 0x67,
    "AVX512_CORE_BF16": 0xE7,
    "AVX10_1_512": 0x1EF,
    "AVX512_CORE_FP16": 0x1EF,
    "AVX10_1_512_AMX": 0xFEF,
    "AVX512_CORE_AMX": 0xFEF,
    "AVX10_1_512_AMX_FP16": 0x1FEF,
    "AVX512_CORE_AMX_FP16": 0x1FEF,
}

#: Class names, most capable first (see the module docstring).
CPU_CLASSES = ("amx", "avx512_vnni_bf16", "avx512_vnni", "avx512", "avx2_vnni", "avx2", "avx", "sse41", "baseline")
#: Classes with exact INT8 dot products (VNNI or AMX): INT8 arithmetic is the same on all of them.
INT8_EXACT_CLASSES = ("amx", "avx512_vnni_bf16", "avx512_vnni", "avx2_vnni")

#: Classes a benchmark can ask for (``--cpu-class``) → the ``ONEDNN_MAX_CPU_ISA`` value that gives them on a
#: CPU that has more (``native``: no cap). ``avx512`` is Kaggle's CPU class (Skylake-SP).
CPU_CLASS_CAPS: dict[str, str | None] = {
    "native": None,
    "avx512_vnni_bf16": "AVX512_CORE_BF16",
    "avx512_vnni": "AVX512_CORE_VNNI",
    "avx512": "AVX512_CORE",
    "avx2_vnni": "AVX2_VNNI",
    "avx2": "AVX2",
}

#: /proc/cpuinfo flags that give OpenVINO fast INT8 (VNNI dot products or AMX tiles).
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: flags reported by `birdinfer bench`
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")

_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's ISA flags from /proc/cpuinfo (empty where that file does not exist)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def physical_cores(cpuinfo: str | Path = "/proc/cpuinfo") -> int:
    """Physical cores available to this process (hyper-threads not counted); ``os.cpu_count()`` if unknown."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = set()
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            physical = core = None
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not line.strip():
                    if core is not None:
                        cores.add((physical, core))
                    physical = core = None
            if core is not None:
                cores.add((physical, core))
    except OSError:
        pass
    return max(1, min(len(cores), logical) if cores else logical)


def sibling_groups(sysfs: str | Path = "/sys/devices/system/cpu") -> list[tuple[int, ...]]:
    """Logical CPUs usable by this process grouped by physical core (hyper-thread siblings together), from
    ``topology/thread_siblings_list``; one group per CPU when the topology is not readable."""
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    groups: dict[tuple[int, ...], list[int]] = {}
    for cpu in usable:
        try:
            text = (Path(sysfs) / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text().strip()
            siblings = tuple(sorted(_parse_cpu_list(text)))
        except (OSError, ValueError):
            siblings = (cpu,)
        groups.setdefault(siblings, []).append(cpu)
    return [tuple(cpus) for _, cpus in sorted(groups.items())]


def _parse_cpu_list(text: str) -> set[int]:
    """``"0-2,5"`` → {0, 1, 2, 5} (the kernel's CPU list format)."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.update(range(int(lo), int(hi) + 1))
        else:
            out.add(int(part))
    return out


def spare_siblings(groups: list[tuple[int, ...]] | None = None) -> list[int]:
    """Logical CPUs that are hyper-thread siblings of another usable CPU (every sibling but the first of
    each core): OpenVINO's streams use one logical CPU per physical core (the first), so these are where a
    decode thread can run without taking a model's CPU. Empty without hyper-threads."""
    groups = sibling_groups() if groups is None else groups
    return sorted(cpu for group in groups for cpu in group[1:])


def thread_affinities() -> list[dict]:
    """Every thread of this process: native id, name and the logical CPUs it may run on (Linux /proc)."""
    out = []
    for task in sorted(Path("/proc/self/task").glob("*"), key=lambda p: int(p.name)):
        try:
            name = (task / "comm").read_text().strip()
            allowed = next(line.split(":", 1)[1].strip() for line in (task / "status").read_text().splitlines()
                           if line.startswith("Cpus_allowed_list"))
        except (OSError, StopIteration):
            continue
        out.append({"tid": int(task.name), "name": name, "cpus": allowed})
    return out


# ============================================================================================ ISA + class
def parse_isa_cap(value: str | None, *, where: str = "ONEDNN_MAX_CPU_ISA") -> int | None:
    """A ``ONEDNN_MAX_CPU_ISA`` value → its feature mask (``None``: no cap). Unknown names raise
    :class:`ParameterError` naming the accepted ones."""
    if value is None or not value.strip():
        return None
    key = value.strip().upper()
    if key not in ONEDNN_ISA_MASKS:
        raise ParameterError(f"{where}={value!r} is not a oneDNN ISA name; use one of {sorted(ONEDNN_ISA_MASKS)}")
    return ONEDNN_ISA_MASKS[key]


def isa_cap(environ: Mapping[str, str] | None = None) -> tuple[str | None, int | None]:
    """``(value, mask)`` of the oneDNN cap set in ``environ`` (default ``os.environ``). An unknown value is
    ignored by oneDNN (it keeps its default): so is it here, with a warning."""
    env = os.environ if environ is None else environ
    for name in _CAP_VARIABLES:
        value = env.get(name)
        if value:
            try:
                return value, parse_isa_cap(value, where=name)
            except ParameterError as e:
                warnings.warn(f"{e}; oneDNN ignores it, so no cap is assumed", stacklevel=2)
                return value, None
    return None, None


def class_of(features: set[str] | frozenset[str]) -> str:
    """The class name (:data:`CPU_CLASSES`) of a set of effective oneDNN features (keys of :data:`ISA_FEATURES`)."""
    f = set(features)
    if {"avx512_core", "amx_int8", "amx_bf16"} <= f:
        return "amx"
    if {"avx512_core", "avx512_vnni", "avx512_bf16"} <= f:
        return "avx512_vnni_bf16"
    if {"avx512_core", "avx512_vnni"} <= f:
        return "avx512_vnni"
    if "avx512_core" in f:
        return "avx512"
    if {"avx2", "avx_vnni"} <= f:
        return "avx2_vnni"
    for name in ("avx2", "avx", "sse41"):
        if name in f:
            return name
    return "baseline"


@dataclass(frozen=True)
class CpuIsa:
    """The ISA the models will run with: the CPU's features, capped by ``ONEDNN_MAX_CPU_ISA`` when set."""

    native: frozenset[str]  # oneDNN features the CPU has
    effective: frozenset[str]  # what is left under the cap
    cap: str | None = None  # the cap's value as set (None: no cap)

    @property
    def native_class(self) -> str:
        return class_of(self.native)

    @property
    def cpu_class(self) -> str:
        """Class of the effective ISA (what precision and INT8 decisions use)."""
        return class_of(self.effective)

    @property
    def int8_exact(self) -> bool:
        """INT8 dot products without int16 saturation (VNNI or AMX available and not masked)."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.effective)

    @property
    def bf16_native(self) -> bool:
        """bf16 arithmetic in hardware (AVX512_BF16 or AMX-BF16) and not masked by the cap."""
        return bool({"avx512_bf16", "amx_bf16"} & self.effective)

    @property
    def float_hint(self) -> str:
        """``INFERENCE_PRECISION_HINT`` for float layers: bf16 only where it is native and unmasked."""
        return "bf16" if self.bf16_native else "f32"

    @property
    def masked(self) -> tuple[str, ...]:
        """Features the CPU has that the cap hides."""
        return tuple(sorted(self.native - self.effective, key=lambda k: ISA_FEATURES[k][0]))

    def label(self) -> str:
        """``"avx512 (cap AVX512_CORE on a avx512_vnni CPU; masks avx512_vnni)"`` or ``"avx512_vnni (native)"``."""
        if self.cap is None or self.effective == self.native:
            return f"{self.cpu_class} (native{'' if self.cap is None else f', cap {self.cap} masks nothing'})"
        return (f"{self.cpu_class} (cap ONEDNN_MAX_CPU_ISA={self.cap} on a {self.native_class} CPU; masks "
                f"{', '.join(self.masked) or 'nothing'})")

    def to_dict(self) -> dict:
        order = lambda s: sorted(s, key=lambda k: ISA_FEATURES[k][0])  # noqa: E731
        return {"class": self.cpu_class, "native_class": self.native_class, "cap": self.cap,
                "effective_features": order(self.effective), "native_features": order(self.native),
                "masked": list(self.masked), "int8_exact": self.int8_exact, "bf16_native": self.bf16_native,
                "float_hint": self.float_hint, "label": self.label()}


def effective_isa(flags: set[str] | None = None, environ: Mapping[str, str] | None = None) -> CpuIsa:
    """The :class:`CpuIsa` of this process: ``flags`` (default /proc/cpuinfo) capped by the environment's
    ``ONEDNN_MAX_CPU_ISA`` (default ``os.environ``)."""
    flags = cpu_flags() if flags is None else set(flags)
    native = frozenset(name for name, (_, needs) in ISA_FEATURES.items() if all(f in flags for f in needs))
    cap, mask = isa_cap(environ)
    effective = native if mask is None else frozenset(n for n in native if ISA_FEATURES[n][0] & mask)
    return CpuIsa(native=native, effective=effective, cap=cap)


# ============================================================================================ child process
def _class_under(cap: str, isa: CpuIsa) -> str:
    return class_of(frozenset(n for n in isa.native if ISA_FEATURES[n][0] & ONEDNN_ISA_MASKS[cap]))


def emulation_problem(cpu_class: str, isa: CpuIsa | None = None) -> str | None:
    """None when this CPU runs ``cpu_class`` (natively or under its ``ONEDNN_MAX_CPU_ISA`` cap), else why not: the
    class is unknown or needs features this CPU does not have (a cap can only hide features)."""
    if cpu_class not in CPU_CLASS_CAPS:
        return f"cpu class {cpu_class!r} is not one of {sorted(CPU_CLASS_CAPS)}"
    cap, isa = CPU_CLASS_CAPS[cpu_class], isa or effective_isa(environ={})
    if cap is None or _class_under(cap, isa) == cpu_class:
        return None
    return (f"this CPU ({isa.native_class}) cannot emulate class {cpu_class!r}: under ONEDNN_MAX_CPU_ISA={cap} it is "
            f"{_class_under(cap, isa)!r} (a cap hides features, it cannot add them); choose from "
            f"{[c for c, v in CPU_CLASS_CAPS.items() if v is None or _class_under(v, isa) == c]}")


def cap_for_class(cpu_class: str, isa: CpuIsa | None = None) -> str | None:
    """The ``ONEDNN_MAX_CPU_ISA`` value that emulates ``cpu_class`` here (None: native); :class:`ParameterError`
    saying why when this CPU cannot (:func:`emulation_problem`)."""
    problem = emulation_problem(cpu_class, isa)
    if problem is not None:
        raise ParameterError(problem)
    return CPU_CLASS_CAPS[cpu_class]


def class_environment(cpu_class: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) with the cap for ``cpu_class`` set (or removed for native)."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _CAP_VARIABLES}
    cap = cap_for_class(cpu_class)
    if cap is not None:
        env["ONEDNN_MAX_CPU_ISA"] = cap
    return env


def run_in_cpu_class(cpu_class: str, target: str, kwargs: Mapping[str, Any] | None = None, *,
                     timeout: float | None = None) -> Any:
    """Call ``target(**kwargs)`` in a fresh Python process whose oneDNN ISA is capped to ``cpu_class``
    (:data:`CPU_CLASS_CAPS`), and return its result. The cap is in the child's environment before any
    library loads, which is the only way it takes effect.

    ``target``: ``"package.module:function"`` or ``"/path/to/script.py:function"``. ``kwargs`` and the
    result travel as JSON (so they must be JSON-serialisable). The child's output goes to this process's
    stdout / stderr. Raises :class:`BirdinferError` when the child fails.
    """
    env = class_environment(cpu_class)
    with tempfile.TemporaryDirectory(prefix="birdinfer_cpu_class_") as tmp:
        request, response = Path(tmp) / "request.json", Path(tmp) / "response.json"
        request.write_text(json.dumps({"target": target, "kwargs": dict(kwargs or {})}), encoding="utf-8")
        sys.stdout.flush()
        sys.stderr.flush()
        proc = subprocess.run([sys.executable, "-m", "birdinfer.runtime.cpu", str(request), str(response)], env=env,
                              timeout=timeout)
        if proc.returncode != 0 or not response.is_file():
            raise BirdinferError(f"{target} in cpu class {cpu_class!r} (ONEDNN_MAX_CPU_ISA="
                                 f"{env.get('ONEDNN_MAX_CPU_ISA', 'unset')}) failed with exit code {proc.returncode}; "
                                 "its error is printed above")
        return json.loads(response.read_text(encoding="utf-8"))["result"]


def _load_target(target: str):
    where, _, name = target.rpartition(":")
    if not where or not name:
        raise ParameterError(f"target {target!r} must be 'module:function' or 'path.py:function'")
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(where).stem, where)
        if spec is None or spec.loader is None:
            raise ParameterError(f"cannot load {where}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


def _child_main(argv: list[str]) -> int:
    request_path, response_path = argv
    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    result = _load_target(request["target"])(**request["kwargs"])
    Path(response_path).write_text(json.dumps({"result": result}, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":  # the child side of run_in_cpu_class
    raise SystemExit(_child_main(sys.argv[1:]))
