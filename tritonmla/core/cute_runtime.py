"""Shared runtime for CuTe DSL kernels: is the DSL usable (cute_error), compile once per machine (compile_cached),
and what the compiled code looks like, for CPU tests (sass_facts).

CuTe DSL (PyPI nvidia-cutlass-dsl 4.8.x, `import cutlass`) is optional and takes ~1 s to import, so nothing here
imports it before a function needs it. `compile_cached` keeps compiled functions in a dict and exports each as a host
object file (the cubin inside) into the disk cache: `$TRITONMLA_CACHE_DIR/cute`, else `~/.cache/tritonmla/cute`. A fresh
process loads that file with `cute.runtime.load_module` (milliseconds) instead of tracing and compiling again.
The target arch is CUTE_DSL_ARCH, read when cutlass is first imported; without it the DSL asks the driver, and on a
machine without a GPU it assumes sm_100a, so set CUTE_DSL_ARCH=sm_90a there before anything imports cutlass.
"""
from __future__ import annotations

import ast
import collections
import ctypes
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import platform
import re
import struct
import subprocess
import sys
import tempfile
import threading
import types
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

SUPPORTED_VERSION = "4.8."
# Part of every disk key: bump it when what an entry holds or how it is named changes.
_FORMAT = "1"

# Counters for tests and diagnostics: compiles, entries loaded from disk, unusable entries dropped.
STATS: dict[str, int] = {"compiled": 0, "loaded": 0, "dropped": 0}

_MEM: dict[tuple, Any] = {}
_LOCK = threading.Lock()
# id(function) -> (function, the object file it was loaded from): a loaded function has no IR left to find its
# cubin in. Holding the function keeps its id from being reused.
_OBJECT_OF: dict[int, tuple[Any, Path]] = {}


@functools.lru_cache(maxsize=None)
def cute_error() -> Optional[str]:
    """None when CuTe DSL 4.8.x imports, else why not (short). Imports cutlass on the first call only."""
    try:
        version: Optional[str] = importlib.metadata.version("nvidia-cutlass-dsl")
    except importlib.metadata.PackageNotFoundError:
        version = None  # not pip-installed, yet perhaps importable (unpacked wheels on PYTHONPATH)
    # Checked before importing: an unsupported version is not worth the second it takes to import.
    if version is not None and not version.startswith(SUPPORTED_VERSION):
        return f"nvidia-cutlass-dsl {version} is not supported (need {SUPPORTED_VERSION}x)"
    try:
        import cutlass
        import cutlass.cute  # noqa: F401
    except ImportError as e:
        if version is None:
            return "nvidia-cutlass-dsl is not installed (pip install 'tritonmla[cute]')"
        return f"importing CuTe DSL failed: {e}"
    except Exception as e:  # a broken install raises anything (missing CUDA libraries, ABI errors)
        return f"importing CuTe DSL failed: {type(e).__name__}: {e}"
    found = str(getattr(cutlass, "__version__", "?"))
    if not found.startswith(SUPPORTED_VERSION):
        return f"cutlass {found} is not supported (need {SUPPORTED_VERSION}x)"
    return None


def cache_dir() -> Path:
    """Where compiled CuTe functions are kept on disk (read on every miss, so tests can point it elsewhere)."""
    root = os.environ.get("TRITONMLA_CACHE_DIR")
    if root:
        return Path(root) / "cute"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tritonmla" / "cute"


def compile_cached(key: tuple, build: Callable[[], tuple[Callable, tuple, dict]], *,
                   sources: Iterable[str] = ()) -> Any:
    """The compiled function for `key`: from memory, else from the disk cache, else `cute.compile(*build())`.

    `build()` returns (jit function, args, kwargs) for `cute.compile` and runs only on a miss. The disk key adds to
    `key` the contents of the file that defines `build` and of `sources` (other files the kernel's code lives in),
    the cutlass version and the DSL's compile settings (arch included); `key` must hold the rest (shapes, dtypes,
    options). Its repr must be the same in every process: a key whose repr holds an address ("at 0x...") is cached
    in memory only. What comes back is a `JitCompiledFunction` loaded from the object file (also right after a
    compile): the same kind in every process. Raises RuntimeError when cute_error() is not None.
    """
    fn = _MEM.get(key)
    if fn is None:
        with _LOCK:  # one compile per key even when threads race for it
            fn = _MEM.get(key)
            if fn is None:
                fn = _MEM[key] = _load_or_compile(key, build, tuple(sources))
    return fn


def kernel_sources(module: types.ModuleType) -> tuple[str, ...]:
    """The files of `module` and of every tritonmla module it imports, transitively (read from the import statements,
    so constants imported by name count): what a kernel's disk-cache entry must be keyed on (compile_cached's
    `sources`), so that an edit to a helper the kernel is traced through recompiles it. This runtime module is
    left out (it compiles the kernel; nothing of it is traced). Once per module and process."""
    return _kernel_sources(module.__name__)


@functools.lru_cache(maxsize=None)
def _kernel_sources(module_name: str) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    todo = [module_name]
    while todo:
        name = todo.pop()
        if name in seen or name == __name__:
            continue
        mod = sys.modules.get(name) or importlib.import_module(name)
        seen[name] = mod.__file__
        package = name if mod.__file__.endswith("__init__.py") else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(Path(mod.__file__).read_text())):
            if isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            todo += [n for n in names if n.split(".")[0] == "tritonmla" and _is_module(n)]
    return tuple(sorted(seen.values()))


def _is_module(name: str) -> bool:
    """Whether `name` is an importable module (`from a.b import c`: c may be a module or just a name in a.b)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, AttributeError):  # a parent that is a module, not a package
        return False


def _load_or_compile(key: tuple, build: Callable[[], tuple[Callable, tuple, dict]], sources: tuple) -> Any:
    error = cute_error()
    if error:
        raise RuntimeError(f"CuTe DSL is unavailable: {error}")
    digest = _disk_digest(key, build, sources)
    folder = cache_dir()
    if digest and folder.is_dir():
        for path in sorted(folder.glob(f"{digest}-*.o")):
            fn = _load(path, digest)
            if fn is not None:
                STATS["loaded"] += 1
                return fn
    import cutlass.cute as cute

    jit_fn, args, kwargs = build()
    compiled = cute.compile(jit_fn, *args, **kwargs)
    STATS["compiled"] += 1
    if digest:
        path = _store(folder, digest, compiled)
        # Hand back what a later process gets, so a process's first call behaves as every later one does.
        loaded = _load(path, digest) if path else None
        if loaded is not None:
            return loaded
    return compiled


def _disk_digest(key: tuple, build: Callable, sources: tuple) -> Optional[str]:
    text = repr(key)
    source = _defining_file(build)
    if source is None or re.search(r" at 0x[0-9a-fA-F]+", text):
        return None
    files = [_file_digest(str(f), os.stat(f).st_mtime_ns) for f in (source, *sources)]
    parts = (_FORMAT, text, *files, _dsl_fingerprint())
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]


def _defining_file(build: Callable) -> Optional[str]:
    fn = getattr(build, "func", build)  # functools.partial
    code = getattr(fn, "__code__", None)
    path = code.co_filename if code is not None else None
    if path is None:
        try:
            path = inspect.getsourcefile(fn)
        except TypeError:
            return None
    return path if path and os.path.isfile(path) else None


@functools.lru_cache(maxsize=None)
def _file_digest(path: str, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@functools.lru_cache(maxsize=None)
def _dsl_fingerprint() -> str:
    import cutlass
    from cutlass.cutlass_dsl import CuTeDSL

    # cache_key_str: every DSL setting that changes the compile (arch, lineinfo, debug, the runtime libs' path, ...).
    return f"cutlass={cutlass.__version__};machine={platform.machine()};{CuTeDSL._get_dsl().envar.cache_key_str()}"


def _prefix(digest: str) -> str:
    return f"tmla_{digest}"  # symbol prefix inside the object file: must be a C identifier


def _content_tag(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def _store(folder: Path, digest: str, compiled: Any) -> Optional[Path]:
    """Write the entry as `<digest>-<content hash>.o`: one atomic rename, and a reader can check the bytes."""
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{digest}-", suffix=".tmp")
        os.close(fd)
        Path(tmp).write_bytes(compiled.dump_to_object(_prefix(digest)))
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a shared cache folder must be readable by all its users
        data = Path(tmp).read_bytes()
        path = folder / f"{digest}-{_content_tag(data)}.o"
        os.replace(tmp, path)
        tmp = None
        return path
    except Exception as e:  # a read-only or full disk costs only the next process's compile
        warnings.warn(f"tritonmla: could not write the CuTe cache entry in {folder}: {e}", stacklevel=3)
        return None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _load(path: Path, digest: str) -> Any:
    """The function in the entry `path`, or None after removing an entry that fails its hash or does not load."""
    try:
        data = path.read_bytes()
        tag = path.name[len(digest) + 1:].partition(".")[0]
        # Checked before loading: flipped bytes in host code would crash the process later, not raise here.
        if _content_tag(data) != tag:
            raise ValueError("content hash mismatch")
        _preload_runtime()
        from cutlass.cute.runtime import load_module

        fn = getattr(load_module(str(path)), _prefix(digest))
    except Exception as e:
        STATS["dropped"] += 1
        warnings.warn(f"tritonmla: recompiling, unusable CuTe cache entry {path}: {e}", stacklevel=3)
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
        return None
    _OBJECT_OF[id(fn)] = (fn, path)
    return fn


@functools.lru_cache(maxsize=None)
def _preload_runtime() -> None:
    # As FlashAttention-4 does (flash_attn/cute/cache_utils.py): load_module opens the runtime libraries without
    # RTLD_GLOBAL, and FA4 saw "undefined symbol" (e.g. _cudaLibraryLoadData) loading cached objects without this.
    from cutlass.cute.runtime import find_runtime_libraries

    for lib in find_runtime_libraries(enable_tvm_ffi=False):  # (its default is True: TVM-FFI is not used)
        if os.path.exists(lib):
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)


# ---------------------------------------------------------------------------------------------------------------
# SASS facts

_ELF_MAGIC = b"\x7fELF"
_EM_CUDA = 190
_FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
_FATBIN_COMPRESSED = 0x2000
# .nv.info attributes (EIATTR_*): a format byte, an attribute byte, a 16-bit size or value; format 4 (EIFMT_SVAL)
# is followed by `size` bytes, here (symbol index u32, value u32).
_EIATTR = {0x2F: "registers", 0x11: "frame_bytes", 0x12: "min_stack_bytes", 0x23: "max_stack_bytes"}
_WATCHED = ("HGMMA", "UTMALDG", "UTMASTG", "STSM", "LDSM", "USETMAXREG", "LDL", "STL")
_SASS_LINE = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:\{\s*)?(?:@!?U?P(?:T|\d+)\s+)?([A-Z][A-Z0-9_]*)")
_SECTION_LINE = re.compile(r"^\s*\.section\s+\.text\.([^,\s]+)")


def sass_facts(compiled: Any) -> dict:
    """What the compiled code of `compiled` is made of, read from its cubin(s) without a GPU.

    `compiled`: what compile_cached or cute.compile returned, or a cubin / object file as bytes or a path.
    Returns {"kernels": {name: facts}} plus, over all kernels, "registers" and "frame_bytes" (max), "opcodes"
    (counts by base opcode, e.g. HGMMA for HGMMA.64x128x16.F32.BF16) and lower-case counts of the watched opcodes
    (hgmma, utmaldg, utmastg, stsm, ldsm, usetmaxreg, ldl, stl). A kernel's facts: registers (EIATTR_REGCOUNT),
    frame_bytes (EIATTR_FRAME_SIZE: per-thread local memory, spills included), min/max_stack_bytes,
    static_smem_bytes (.nv.shared.<kernel>; CuTe kernels mostly use dynamic shared memory) and opcodes.
    """
    kernels: dict[str, dict] = {}
    for cubin in _cubins(compiled):
        kernels.update(_cubin_facts(cubin))
    total: collections.Counter = collections.Counter()
    for facts in kernels.values():
        total.update(facts["opcodes"])
    out: dict[str, Any] = {
        "kernels": kernels,
        "registers": max((k["registers"] for k in kernels.values()), default=0),
        "frame_bytes": max((k["frame_bytes"] for k in kernels.values()), default=0),
        "opcodes": dict(total),
    }
    out.update({op.lower(): total[op] for op in _WATCHED})
    return out


def _cubins(compiled: Any) -> list[bytes]:
    if isinstance(compiled, (bytes, bytearray)):
        blob = bytes(compiled)
    elif isinstance(compiled, (str, Path)):
        blob = Path(compiled).read_bytes()
    else:
        cubin = getattr(getattr(compiled, "artifacts", None), "CUBIN", None)  # compiled with options="--keep-cubin"
        if isinstance(cubin, bytes) and cubin.startswith(_ELF_MAGIC):
            return [cubin]
        fn, path = _OBJECT_OF.get(id(compiled), (None, None))
        if fn is compiled and path is not None:
            blob = path.read_bytes()
        elif getattr(compiled, "ir_module", None) is not None:
            blob = _object_bytes(compiled)
        else:
            raise ValueError(f"no cubin to be found in {type(compiled).__name__}")
    if blob.startswith(_ELF_MAGIC) and struct.unpack_from("<H", blob, 0x12)[0] == _EM_CUDA:
        return [blob]
    cubins = _fatbin_cubins(blob)
    if not cubins:
        raise ValueError("no uncompressed cubin found (compile with options='--keep-cubin' to get one)")
    return cubins


def _object_bytes(compiled: Any) -> bytes:
    """The host object file of a function compiled in this process: its fatbin holds the cubin."""
    return compiled.dump_to_object("tmla_sass")


def _fatbin_cubins(blob: bytes) -> list[bytes]:
    """The uncompressed ELF entries of every fatbin embedded in `blob` (a host object file holds them as data)."""
    cubins = []
    start = blob.find(_FATBIN_MAGIC)
    while start >= 0:
        header_size, fat_size = struct.unpack_from("<HQ", blob, start + 6)
        entry, end = start + header_size, min(start + header_size + fat_size, len(blob))
        while entry + 48 <= end:
            kind, entry_header, size = struct.unpack_from("<H2xIQ", blob, entry)
            flags = struct.unpack_from("<Q", blob, entry + 40)[0]
            payload = blob[entry + entry_header: entry + entry_header + size]
            if kind == 2 and not flags & _FATBIN_COMPRESSED and payload.startswith(_ELF_MAGIC):
                cubins.append(payload[:_elf_size(payload)])  # drop the entry's padding
            if entry_header == 0 or size == 0:
                break
            entry += entry_header + size
        start = blob.find(_FATBIN_MAGIC, max(end, start + 4))
    return cubins


def _elf_size(elf: bytes) -> int:
    """Where the ELF's last part (section contents, section or program header table) ends."""
    phoff, shoff = struct.unpack_from("<QQ", elf, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", elf, 0x36)
    end = max(0x40, phoff + phentsize * phnum, shoff + shentsize * shnum)
    for i in range(shnum):
        kind, = struct.unpack_from("<I", elf, shoff + i * shentsize + 4)
        offset, size = struct.unpack_from("<QQ", elf, shoff + i * shentsize + 24)
        if kind != 8:  # SHT_NOBITS takes no room in the file
            end = max(end, offset + size)
    return end


def _elf_sections(elf: bytes) -> dict[str, tuple[int, bytes]]:
    """Section name -> (size, contents) of a 64-bit little-endian ELF (NOBITS sections have a size, no contents)."""
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    _, _, _, _, str_off, str_size = headers[shstrndx]
    names = elf[str_off:str_off + str_size]
    sections = {}
    for name_off, kind, _, _, offset, size in headers:
        name = names[name_off:names.index(b"\0", name_off)].decode()
        sections[name] = (size, b"" if kind == 8 else elf[offset:offset + size])  # 8: SHT_NOBITS
    return sections


def _symbol_names(sections: dict[str, tuple[int, bytes]]) -> list[str]:
    symtab, strtab = sections.get(".symtab", (0, b""))[1], sections.get(".strtab", (0, b""))[1]
    names = []
    for i in range(0, len(symtab) - 23, 24):
        name_off, = struct.unpack_from("<I", symtab, i)
        names.append(strtab[name_off:strtab.index(b"\0", name_off)].decode())
    return names


def _cubin_facts(cubin: bytes) -> dict[str, dict]:
    sections = _elf_sections(cubin)
    kernels = {name[len(".text."):]: {"registers": 0, "frame_bytes": 0, "min_stack_bytes": 0, "max_stack_bytes": 0,
                                      "static_smem_bytes": sections.get(".nv.shared." + name[len(".text."):],
                                                                        (0, b""))[0],
                                      "opcodes": collections.Counter()}
               for name in sections if name.startswith(".text.")}
    symbols = _symbol_names(sections)
    info = sections.get(".nv.info", (0, b""))[1]
    at = 0
    while at + 4 <= len(info):
        fmt, attr, size = struct.unpack_from("<BBH", info, at)
        if fmt == 4:  # EIFMT_SVAL
            if attr in _EIATTR and size == 8:
                sym, value = struct.unpack_from("<II", info, at + 4)
                if sym < len(symbols) and symbols[sym] in kernels:
                    kernels[symbols[sym]][_EIATTR[attr]] = value
            at += 4 + size
        else:
            at += 4
    current = None
    for line in _disassemble(cubin).splitlines():
        section = _SECTION_LINE.match(line)
        if section:
            current = kernels.get(section.group(1))
            continue
        op = _SASS_LINE.match(line)
        if op and current is not None:
            current["opcodes"][op.group(1)] += 1
    for facts in kernels.values():
        facts["opcodes"] = dict(facts["opcodes"])
    return kernels


@functools.lru_cache(maxsize=None)
def nvdisasm_path() -> str:
    """nvdisasm from the nvidia-cuda-nvdisasm wheel (through its file list, not PATH), else where the DSL finds one."""
    try:
        dist = importlib.metadata.distribution("nvidia-cuda-nvdisasm")
        for entry in dist.files or ():
            if entry.name == "nvdisasm" and Path(str(dist.locate_file(entry))).is_file():
                return str(dist.locate_file(entry))
    except importlib.metadata.PackageNotFoundError:
        pass
    try:  # the DSL's own search (the same wheel, then a CUDA toolkit: CUDA_HOME, nvcc's, /usr/local/cuda*)
        from cutlass.base_dsl.env_manager import _find_nvdisasm_binary

        return _find_nvdisasm_binary()
    except Exception:
        raise RuntimeError("nvdisasm not found: pip install nvidia-cuda-nvdisasm (in tritonmla[test])") from None


def _disassemble(cubin: bytes) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        Path(path).write_bytes(cubin)
        # -c: code sections only. Its stderr (a warning about the ELF flavour on every sm_90a cubin) is noise.
        done = subprocess.run([nvdisasm_path(), "-c", path], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nvdisasm failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout
