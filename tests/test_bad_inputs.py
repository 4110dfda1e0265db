"""Bad values in the inputs (issue 24): no bad page id, length or sparse index can make a kernel read out of
bounds. Default mode: a request with a bad input gets a meaningless result, every other request of the batch is
bitwise what a clean run gives (dense: page ids clamped into the cache; sparse: out-of-range indices skipped).
Checked mode (tritonmla.check_inputs, TRITONMLA_CHECK=1): each bad value is a ValueError naming the argument, the
request and the entry; garbage where it is never read (block-table entries past a request's pages, index slots
past topk_length) passes.

CPU tests run the kernels under TRITON_INTERPRET=1 (where an out-of-bounds read used to end the process with a
segmentation fault); the GPU tests at the end (skipped without CUDA) run every dense kernel choice and sparse
decoding on a poisoned batch."""
from __future__ import annotations

import pytest
import torch

import tritonmla
from tritonmla.core import config_cache
from tritonmla.core.hopper import hopper_device
from tritonmla.core.runtime import interpreter_enabled
from tritonmla.dense_decode import dispatch
from tritonmla.bench.sparse import make_sparse_inputs

from helpers import make_decode_inputs

interpreted = pytest.mark.skipif(not interpreter_enabled(), reason="CPU kernel tests need TRITON_INTERPRET=1")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SEQLENS = [70, 130, 40, 100, 64]
POISONED = (1, 2, 4)  # requests whose used block-table entries get a bad page id
BAD_PAGE_IDS = (99, -5, 2 ** 31 - 1)  # (99 and 2**31-1 past the cache; -5 negative)


def dense_inputs(page_size: int, heads_q: int = 4, seq_q: int = 1, device: str = "cpu"):
    gen = torch.Generator(device=device).manual_seed(page_size + heads_q)
    return make_decode_inputs(SEQLENS, seq_q, heads_q, 1, page_size, torch.bfloat16, device, generator=gen)


def poison_block_table(block_table: torch.Tensor, page_size: int) -> torch.Tensor:
    """A copy with one used entry of each POISONED request replaced by a bad page id (the last page of request 1,
    the first of request 2, a middle one of request 4)."""
    bad = block_table.clone()
    for b, value in zip(POISONED, BAD_PAGE_IDS):
        pages = -(-SEQLENS[b] // page_size)
        bad[b, {1: pages - 1, 2: 0, 4: pages // 2}[b]] = value
    return bad


def others(t: torch.Tensor) -> torch.Tensor:
    keep = [b for b in range(len(SEQLENS)) if b not in POISONED]
    return t[keep]


def assert_others_bitwise(got, want) -> None:
    for name, g, w in zip(("out", "lse"), got, want):
        assert torch.equal(others(g), others(w)), f"{name}: a request without a bad page id changed"


def dense_run(x, block_table, causal: bool, kernel):
    meta = tritonmla.get_mla_metadata(x.cache_seqlens, x.q.shape[1] * x.q.shape[2], 1)
    return tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, block_table, x.cache_seqlens, 512, *meta,
                                            causal=causal, kernel=kernel)


# ----------------------------------------------------------------------------------------------- default mode

@interpreted
@pytest.mark.parametrize("page_size,causal", [(16, True), (64, False)])  # a tile over many pages / in one page
def test_dense_bad_page_ids_harm_no_other_request(page_size, causal):
    """Page ids 99 (8x past the cache), -5 and 2**31 - 1 in used entries: no crash; the other requests are
    bitwise the clean run's."""
    x = dense_inputs(page_size)
    assert x.k_cache.shape[0] < 99
    clean = dense_run(x, x.block_table, causal, "portable")
    poisoned = dense_run(x, poison_block_table(x.block_table, page_size), causal, "portable")
    assert_others_bitwise(poisoned, clean)
    assert not torch.isnan(others(clean[0])).any()


def test_reference_clamps_page_ids_and_lengths():
    """The pure-PyTorch path (CPU without the interpreter) clamps as the kernels do: no IndexError."""
    x = dense_inputs(16)
    clean = tritonmla.mla_decode_reference(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512)
    seqlens = x.cache_seqlens.clone()
    seqlens[POISONED[0]] = 10 ** 6  # beyond the block table's capacity: clamped to it
    poisoned = tritonmla.mla_decode_reference(x.q, x.k_cache, poison_block_table(x.block_table, 16), seqlens, 512)
    assert_others_bitwise(poisoned, clean)


def sparse_inputs(device: str = "cpu", heads_q: int = 16):
    return make_sparse_inputs(3, 2, heads_q, 576, 64, 16, 100, extra=(32, 16, 50), have_topk_length=True,
                              have_extra_topk_length=True, dtype=torch.float16 if device == "cpu" else torch.bfloat16,
                              device=device, seed=3)


SPARSE_BAD = (-2 ** 31, -2, 10 ** 6, 2 ** 31 - 1)


def poison_sparse(x, b: int = 1):
    """Copies of the index tensors with every live slot of request b set to an out-of-range value."""
    indices, extra = x.indices.clone(), x.extra_indices.clone()
    for t, cache in ((indices, x.k_cache), (extra, x.extra_k_cache)):
        values = torch.tensor(SPARSE_BAD + (cache.shape[0] * cache.shape[1],), dtype=torch.int32, device=t.device)
        t[b] = values[torch.arange(t[b].numel(), device=t.device) % values.numel()].view_as(t[b])
    return indices, extra


def sparse_run(x, indices, extra, kernel=None):
    meta, _ = tritonmla.get_mla_metadata()
    kwargs = x.kwargs()
    kwargs.update(indices=indices, extra_indices_in_kvcache=extra)
    return tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, meta, None, kernel=kernel, **kwargs)


@interpreted
def test_sparse_out_of_range_indices_harm_no_other_request():
    """Every live slot of request 1, main and extra cache, out of range: skipped, never read; requests 0 and 2
    are bitwise the clean run's (and request 1 sees the keys of no live slot: out 0, lse +inf)."""
    x = sparse_inputs()
    x.topk_length[1] = 64  # request 1's every slot is live (the others' lengths, hence the plan, unchanged)
    clean = sparse_run(x, x.indices, x.extra_indices)
    poisoned = sparse_run(x, *poison_sparse(x))
    for g, w in zip(poisoned, clean):
        assert torch.equal(g[[0, 2]], w[[0, 2]])
    assert torch.equal(poisoned[0][1], torch.zeros_like(poisoned[0][1]))
    assert torch.isinf(poisoned[1][1]).all()


# ----------------------------------------------------------------------------------------------- checked mode

@pytest.fixture()
def dense_good():
    x = dense_inputs(16)
    return dict(q=x.q, k_cache=x.k_cache, block_table=x.block_table, cache_seqlens=x.cache_seqlens)


def changed(args: dict, name: str, index, value) -> dict:
    t = args[name].clone()
    t[index] = value
    return {**args, name: t}


def test_check_inputs_passes_good_dense_inputs_with_garbage_in_unused_entries(dense_good):
    bt = dense_good["block_table"]
    assert (bt == 2147480000).any()  # make_decode_inputs' garbage in entries past each request's pages
    tritonmla.check_inputs(**dense_good)
    garbage = changed(dense_good, "block_table", (2, bt.shape[1] - 1), -7)  # request 2 uses 3 of 10 entries
    tritonmla.check_inputs(**garbage)
    full = changed(dense_good, "cache_seqlens", 0, bt.shape[1] * 16)  # exactly the capacity: fine...
    full["block_table"] = full["block_table"].clone()
    full["block_table"][0] = torch.arange(bt.shape[1])  # ...once every entry is a page
    tritonmla.check_inputs(**full)
    empty = changed(dense_good, "cache_seqlens", 3, 0)  # an empty request uses no entry
    empty["block_table"][3] = -1
    tritonmla.check_inputs(**empty)


@pytest.mark.parametrize("name,index,value,match", [
    ("block_table", (1, 8), 99, r"block_table\[1, 8\] = 99 \(request 1, entry 8\).*num_blocks = 52"),
    ("block_table", (1, 0), 52, r"block_table\[1, 0\] = 52 \(request 1, entry 0\)"),
    ("block_table", (2, 2), -5, r"block_table\[2, 2\] = -5 \(request 2, entry 2\).*entries 0..2"),
    ("cache_seqlens", 3, -1, r"cache_seqlens\[3\] = -1 \(request 3\) is outside \[0, "),
    ("cache_seqlens", 0, 161, r"cache_seqlens\[0\] = 161 \(request 0\).*capacity.*10 \* 16 = 160"),
])
def test_check_inputs_names_the_bad_dense_value(dense_good, name, index, value, match):
    assert dense_good["k_cache"].shape[0] == 52 and dense_good["block_table"].shape[1] == 10
    with pytest.raises(ValueError, match=match):
        tritonmla.check_inputs(**changed(dense_good, name, index, value))


def test_check_inputs_still_raises_the_shape_errors(dense_good):
    with pytest.raises(TypeError, match="block_table must have dtype int32"):
        tritonmla.check_inputs(**{**dense_good, "block_table": dense_good["block_table"].long()})


@pytest.fixture()
def sparse_good():
    x = sparse_inputs()
    x.indices[int(torch.argmax(x.topk_length)), 0, 0] = -1  # -1 in a live slot: unused, not an error
    return dict(q=x.q, k_cache=x.k_cache, indices=x.indices, topk_length=x.topk_length,
                extra_k_cache=x.extra_k_cache, extra_indices_in_kvcache=x.extra_indices,
                extra_topk_length=x.extra_topk_length)


def test_check_inputs_passes_good_sparse_inputs(sparse_good):
    """-1 in live slots and any junk past topk_length (make_sparse_inputs puts it there) pass."""
    tritonmla.check_inputs(**sparse_good)
    whole = dict(sparse_good, topk_length=None, extra_topk_length=None)  # without lengths every slot is live:
    for name, length_name in (("indices", "topk_length"), ("extra_indices_in_kvcache", "extra_topk_length")):
        t, lengths = sparse_good[name], sparse_good[length_name]
        live = torch.arange(t.shape[-1]) < lengths[:, None, None]
        whole[name] = torch.where(live, t, -1)  # -1 past the old lengths passes
    tritonmla.check_inputs(**whole)
    whole["indices"][0, 0, -1] = 10 ** 6
    with pytest.raises(ValueError, match=r"indices\[0, 0, 63\] = 1000000"):
        tritonmla.check_inputs(**whole)


def live_slot(args: dict, name: str, length_name: str) -> tuple[int, int, int]:
    lengths = args[length_name]
    b = int(torch.argmax(lengths))
    return b, 1, int(lengths[b]) - 1


@pytest.mark.parametrize("name,length_name,value,cache", [
    ("indices", "topk_length", 10 ** 6, "k_cache"),
    ("indices", "topk_length", -2, "k_cache"),
    ("extra_indices_in_kvcache", "extra_topk_length", 2 ** 31 - 1, "extra_k_cache"),
])
def test_check_inputs_names_the_bad_sparse_index(sparse_good, name, length_name, value, cache):
    b, i, k = live_slot(sparse_good, name, length_name)
    with pytest.raises(ValueError, match=rf"{name}\[{b}, {i}, {k}\] = {value} \(request {b}, query position {i}, "
                                         rf"slot {k}\) is neither -1 nor a token of {cache}"):
        tritonmla.check_inputs(**changed(sparse_good, name, (b, i, k), value))


@pytest.mark.parametrize("name,value,limit", [
    ("topk_length", 65, 64), ("topk_length", -1, 64), ("extra_topk_length", 33, 32), ("extra_topk_length", -3, 32)])
def test_check_inputs_names_the_bad_topk_length(sparse_good, name, value, limit):
    with pytest.raises(ValueError, match=rf"{name}\[2\] = {value} \(request 2\) is outside \[0, .*= {limit}\]"):
        tritonmla.check_inputs(**changed(sparse_good, name, 2, value))


def test_checked_mode_env_var(monkeypatch):
    for value, on in ((None, False), ("", False), ("0", False), ("1", True), ("yes", True)):
        if value is None:
            monkeypatch.delenv("TRITONMLA_CHECK", raising=False)
        else:
            monkeypatch.setenv("TRITONMLA_CHECK", value)
        assert config_cache.checked_mode() is on


@interpreted
def test_checked_mode_checks_every_call_cached_or_not(monkeypatch):
    """TRITONMLA_CHECK=1: flash_mla_with_kvcache raises for a bad page id, also on the cached fast path (the
    configuration ran before); the bad call runs no kernel. Sparse calls too."""
    x = dense_inputs(64)
    bad = poison_block_table(x.block_table, 64)
    monkeypatch.setenv("TRITONMLA_CHECK", "1")
    dense_run(x, x.block_table, False, "portable")  # good inputs pass, and the configuration is now cached
    with pytest.raises(ValueError, match=r"block_table\[1, 2\] = 99 \(request 1, entry 2\)"):
        dense_run(x, bad, False, "portable")
    y = sparse_inputs()
    y.topk_length[1] = 64
    indices, extra = poison_sparse(y)
    with pytest.raises(ValueError, match=r"indices\[1, 0, 0\] = -2147483648"):
        sparse_run(y, indices, extra)
    monkeypatch.delenv("TRITONMLA_CHECK")
    dense_run(x, bad, False, "portable")  # off: runs (and harms nothing, see above)


# ------------------------------------------------------------------------------------------------ GPU (CUDA)

def dense_kernels() -> list:
    kernels = [None, "portable"]
    if torch.cuda.is_available() and hopper_device(torch.device("cuda")) is None:
        kernels.append("hopper")
    if torch.cuda.is_available() and dispatch.cute_device(torch.device("cuda")) is None:
        kernels.append("cute")
    return kernels


@needs_cuda
@pytest.mark.parametrize("kernel", dense_kernels())
@pytest.mark.parametrize("heads_q,seq_q,page_size", [(16, 1, 64), (128, 2, 64), (64, 1, 16)])
def test_dense_bad_page_ids_harm_no_other_request_gpu(kernel, heads_q, seq_q, page_size):
    """Every dense kernel (the Hopper kernel's 8-warp one at 16 rows, the seesaw at 256): no illegal address
    (the CUDA context stays usable), others bitwise the clean run's."""
    if kernel in ("hopper", "cute") and page_size % 64:
        pytest.skip("the Hopper kernels take page sizes that are multiples of 64")
    x = dense_inputs(page_size, heads_q, seq_q, "cuda")
    clean = dense_run(x, x.block_table, True, kernel)
    poisoned = dense_run(x, poison_block_table(x.block_table, page_size), True, kernel)
    torch.cuda.synchronize()
    assert_others_bitwise(poisoned, clean)
    again = dense_run(x, x.block_table, True, kernel)
    assert_others_bitwise(again, clean)
    assert torch.equal(again[0], clean[0])


@needs_cuda
@pytest.mark.parametrize("kernel,heads_q", [(None, 16), (None, 64), ("portable", 64)])
def test_sparse_out_of_range_indices_harm_no_other_request_gpu(kernel, heads_q):
    x = sparse_inputs("cuda", heads_q)
    x.topk_length[1] = 64
    clean = sparse_run(x, x.indices, x.extra_indices, kernel)
    poisoned = sparse_run(x, *poison_sparse(x), kernel)
    torch.cuda.synchronize()
    for g, w in zip(poisoned, clean):
        assert torch.equal(g[[0, 2]], w[[0, 2]])


@needs_cuda
def test_check_inputs_on_cuda_tensors():
    x = dense_inputs(64, device="cuda")
    tritonmla.check_inputs(x.q, x.k_cache, x.block_table, x.cache_seqlens)
    with pytest.raises(ValueError, match=r"block_table\[1, 2\] = 99 \(request 1, entry 2\)"):
        tritonmla.check_inputs(x.q, x.k_cache, poison_block_table(x.block_table, 64), x.cache_seqlens)
    y = sparse_inputs("cuda")
    y.extra_topk_length[1] = 32  # live extra slots in request 1, holding valid indices (past the old length: garbage)
    tokens = y.extra_k_cache.shape[0] * y.extra_k_cache.shape[1]
    y.extra_indices[1] = torch.randint(0, tokens, y.extra_indices[1].shape, dtype=torch.int32, device="cuda")
    indices, extra = poison_sparse(y)
    tritonmla.check_inputs(y.q, y.k_cache, indices=y.indices, topk_length=y.topk_length,
                           extra_k_cache=y.extra_k_cache, extra_indices_in_kvcache=y.extra_indices,
                           extra_topk_length=y.extra_topk_length)
    with pytest.raises(ValueError, match=r"extra_indices_in_kvcache\[1, "):
        tritonmla.check_inputs(y.q, y.k_cache, indices=y.indices, topk_length=y.topk_length,
                               extra_k_cache=y.extra_k_cache, extra_indices_in_kvcache=extra,
                               extra_topk_length=y.extra_topk_length)
