"""tritonmla.core.cute_runtime on the CPU: compiles tiny sm_90a CuTe DSL kernels (no GPU needed to compile), reads
their SASS facts, and checks the disk cache: a fresh process loads instead of compiling, a bad entry is recompiled.

Skipped without CuTe DSL 4.8.x. Without a GPU the DSL would target sm_100a, so CUTE_DSL_ARCH=sm_90a is set here,
before cutlass is first imported (the DSL reads it then)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")

from tritonmla.core import cute_runtime as cr  # noqa: E402

if cr.cute_error() is not None:
    pytest.skip(f"CuTe DSL unavailable: {cr.cute_error()}", allow_module_level=True)

import cutlass  # noqa: E402
import cutlass.cute as cute  # noqa: E402
from cutlass.cute.runtime import make_fake_compact_tensor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@cute.kernel
def _double_kernel(a: cute.Tensor, b: cute.Tensor):
    tidx, _, _ = cute.arch.thread_idx()
    bidx, _, _ = cute.arch.block_idx()
    i = bidx * 128 + tidx
    b[i] = a[i] * 2.0


@cute.kernel
def _local_kernel(a: cute.Tensor, b: cute.Tensor):
    # A register array indexed by runtime values lives in local memory: STL/LDL and a stack frame.
    tidx, _, _ = cute.arch.thread_idx()
    bidx, _, _ = cute.arch.block_idx()
    i = bidx * 128 + tidx
    r = cute.make_rmem_tensor((32,), cutlass.Float32)
    r.fill(0.0)
    r[tidx % 32] = a[i]
    b[i] = r[a[i].to(cutlass.Int32) % 32]


@cute.jit
def _double(a: cute.Tensor, b: cute.Tensor):
    _double_kernel(a, b).launch(grid=[a.shape[0] // 128, 1, 1], block=[128, 1, 1])


@cute.jit
def _local(a: cute.Tensor, b: cute.Tensor):
    _local_kernel(a, b).launch(grid=[a.shape[0] // 128, 1, 1], block=[128, 1, 1])


def _build(host, **kwargs):
    n = cute.sym_int32()
    tensors = [make_fake_compact_tensor(cutlass.Float32, (n,), assumed_align=16) for _ in range(2)]
    return host, tuple(tensors), kwargs


def double():
    """The doubling kernel through compile_cached (also what the fresh process in test_fresh_process_loads runs)."""
    return cr.compile_cached(("test_cute_runtime.double", 1), lambda: _build(_double))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty disk cache and in-memory cache, and zeroed counters."""
    if cutlass.cutlass_dsl.CuTeDSL._get_dsl().envar.arch != "sm_90a":
        pytest.skip("cutlass was imported before CUTE_DSL_ARCH=sm_90a was set")
    monkeypatch.setenv("TRITONMLA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cr, "_MEM", {})
    monkeypatch.setattr(cr, "STATS", dict.fromkeys(cr.STATS, 0))
    return tmp_path / "cute"


def test_import_does_not_import_cutlass():
    code = ("import sys, tritonmla, tritonmla.core.cute_runtime; "
            "assert 'cutlass' not in sys.modules, 'cutlass imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_cute_error(monkeypatch):
    assert cr.cute_error() is None

    def unpackaged(name):  # unpacked wheels on PYTHONPATH: no metadata, cutlass still imports
        raise cr.importlib.metadata.PackageNotFoundError(name)

    try:
        for version, expected in ((lambda name: "4.7.0", "4.7.0"), (unpackaged, None)):
            monkeypatch.setattr(cr.importlib.metadata, "version", version)
            cr.cute_error.cache_clear()
            error = cr.cute_error()
            assert error is None if expected is None else expected in error
    finally:
        monkeypatch.undo()
        cr.cute_error.cache_clear()
    assert cr.cute_error() is None


def test_memory_and_disk_cache(cache):
    fn = double()
    assert cr.STATS == {"compiled": 1, "loaded": 0, "dropped": 0}
    assert double() is fn  # from memory
    assert cr.STATS["compiled"] == 1
    entries = list(cache.glob("*.o"))
    assert len(entries) == 1 and not list(cache.glob(".*"))  # one entry, no temporary left behind
    cr._MEM.clear()
    double()
    assert cr.STATS == {"compiled": 1, "loaded": 1, "dropped": 0}
    # A different key is a different entry; so are other source files.
    cr.compile_cached(("test_cute_runtime.double", 2), lambda: _build(_double))
    assert cr.STATS["compiled"] == 2 and len(list(cache.glob("*.o"))) == 2
    cr._MEM.clear()
    cr.compile_cached(("test_cute_runtime.double", 1), lambda: _build(_double), sources=[ROOT / "tests/helpers.py"])
    assert cr.STATS["compiled"] == 3 and len(list(cache.glob("*.o"))) == 3


def test_sass_facts(cache):
    facts = cr.sass_facts(double())  # a function loaded from its object file
    assert len(facts["kernels"]) == 1
    (name, kernel), = facts["kernels"].items()
    assert "_double_kernel" in name
    assert 4 <= facts["registers"] == kernel["registers"] <= 255
    assert facts["frame_bytes"] == 0 and facts["ldl"] == facts["stl"] == 0
    assert facts["opcodes"]["LDG"] == facts["opcodes"]["STG"] == 1 and facts["opcodes"]["EXIT"] >= 1
    assert facts["opcodes"]["FADD"] + facts["opcodes"].get("FMUL", 0) == 1
    assert facts["hgmma"] == facts["utmaldg"] == facts["usetmaxreg"] == 0
    # The same facts from a compile in memory (its object file's fatbin) and from the cubin cute.compile keeps.
    host, args, _ = _build(_double)
    compiled = cute.compile(host, *args)
    kept = cute.compile(host, *args, options=f"--keep-cubin --dump-dir {cache.parent}")
    assert isinstance(kept.artifacts.CUBIN, bytes)
    for other in (compiled, kept, kept.artifacts.CUBIN):
        assert cr.sass_facts(other) == facts

    local = cr.sass_facts(cr.compile_cached(("test_cute_runtime.local",), lambda: _build(_local)))
    assert local["frame_bytes"] >= 128 and local["stl"] >= 1 and local["ldl"] >= 1


def test_fresh_process_loads(cache):
    double()
    assert cr.STATS["compiled"] == 1
    code = ("import json, sys; sys.path.insert(0, 'tests'); import test_cute_runtime as t; "
            "from tritonmla.core import cute_runtime as cr; f = t.double(); "
            "print(json.dumps([cr.STATS, type(f).__name__, cr.sass_facts(f)['registers']]))")
    env = dict(os.environ, TRITONMLA_CACHE_DIR=str(cache.parent))
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env, capture_output=True, text=True)
    stats, kind, registers = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats == {"compiled": 0, "loaded": 1, "dropped": 0}
    assert kind == "CudaDialectJitCompiledFunction"
    assert registers == cr.sass_facts(double())["registers"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_bad_entry_recompiled(cache, damage):
    double()
    entry, = cache.glob("*.o")
    data = bytearray(entry.read_bytes())
    if damage == "flip":  # caught by the content hash in the name
        data[len(data) // 2] ^= 0xFF
        entry.write_bytes(data)
    elif damage == "truncate":
        entry.write_bytes(data[: len(data) // 2])
    else:  # bytes that match their name's hash but are no object file: load_module must raise, not crash
        garbage = b"not an object file" * 64
        entry.unlink()
        entry = cache / f"{entry.name.split('-')[0]}-{cr._content_tag(garbage)}.o"
        entry.write_bytes(garbage)
    cr._MEM.clear()
    with pytest.warns(UserWarning, match="unusable CuTe cache entry"):
        fn = double()
    assert cr.STATS == {"compiled": 2, "loaded": 0, "dropped": 1}
    fresh, = cache.glob("*.o")  # the bad entry is gone, a sound one took its place (the same name, unless garbage)
    assert cr._content_tag(fresh.read_bytes()) == fresh.name.split("-")[1].split(".")[0]
    assert cr.sass_facts(fn)["opcodes"]["STG"] == 1


def test_unwritable_cache_still_compiles(cache, monkeypatch):
    cache.parent.joinpath("cute").write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not write"):
        fn = double()
    assert cr.STATS["compiled"] == 1 and cr.sass_facts(fn)["opcodes"]["LDG"] == 1


def test_auto_off_sm90_does_not_import_cute_dsl():
    """Choosing a dense kernel for a CPU tensor (the interpreter) checks the device before importing CuTe DSL
    (seconds): a fresh process ends without cutlass imported."""
    script = ("import sys, torch\nfrom tritonmla.dense_decode import dispatch\n"
              "q, k = torch.zeros(1, 1, 16, 576, dtype=torch.bfloat16), torch.zeros(4, 64, 1, 576, dtype=torch.bfloat16)\n"
              "print(dispatch.choose('auto', q, k), dispatch.plans_for_hopper(q.device, 'auto'), 'cutlass' in sys.modules)")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("TRITONMLA_KERNEL", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["portable", "False", "False"], out.stdout + out.stderr


def test_sparse_prefill_off_sm90_does_not_import_cute_dsl():
    """A sparse prefill call on a CPU tensor (the interpreter) takes the portable kernel without importing CuTe DSL:
    the CuTe kernel's module (which imports cutlass) is imported only after the device check."""
    script = ("import sys, torch\nfrom tritonmla.bench.sparse_prefill import make_prefill_inputs\n"
              "from tritonmla.sparse_prefill import call\n"
              "x = make_prefill_inputs(2, 64, 64, 16, 576, device='cpu', seed=0)\n"
              "c = call.SparsePrefillCall(x.q, x.kv, x.indices, x.topk_length, x.attn_sink, x.sm_scale)\n"
              "print(c.cute is None, 'cutlass' in sys.modules)")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("TRITONMLA_KERNEL", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"], out.stdout + out.stderr
