"""The CUDA kernel on a real GPU (skipped elsewhere): sparse_dense through the "flashllm_spmm_cuda"
FFI target against float64 numpy, every tiling config and split-K, jit / vmap / grad, inside a
jitted while_loop, and with XLA command buffers (CUDA graphs) capturing the custom call."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flashllm as jf
from jax_flashllm import _ffi
from jax_flashllm.primitive import choose_split_k, spmm
from jax_flashllm.testing import kernel_view_dense
from reference import DTYPES, assert_close_to_reference, random_sparse

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(jax.default_backend() != "gpu" or not _ffi.has_cuda_kernel(),
                       reason="needs a CUDA GPU and the _flashllm_cuda extension"),
]


def _case(seed, m, k, n, sparsity, dtype):
    rng = np.random.default_rng(seed)
    w = random_sparse(rng, (m, k), sparsity, dtype)
    return jf.SparseMatrix.from_dense(w), w, rng.standard_normal((n, k)).astype(dtype)


def test_lowers_to_the_cuda_target():
    s, _, x = _case(0, 256, 128, 8, 0.8, DTYPES[1])
    hlo = jax.jit(jf.sparse_dense).lower(x, s).as_text()
    assert _ffi.CUDA_TARGET in hlo


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("n", [1, 3, 8, 9, 16, 31, 32, 33, 64, 65, 128, 200, 777])
def test_matches_reference_every_n(n, dtype):
    # K = 1000: not a multiple of 64; K % 8 == 0, so X streams with cp.async (masked tail).
    s, w, x = _case(n, 700, 1000, n, 0.8, dtype)
    assert_close_to_reference(jax.jit(jf.sparse_dense)(x, s), x, w)


@pytest.mark.parametrize("m,k", [(1, 1), (129, 65), (300, 197), (4096, 4096)])
def test_shapes_off_the_grid_and_unaligned_rows(m, k):
    # Odd K: rows of x are not 16-byte aligned, so the kernel takes its element-wise X path.
    s, w, x = _case(m + k, m, k, 5, 0.7, DTYPES[0])
    assert_close_to_reference(jf.sparse_dense(x, s), x, w)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_split_k_decode_shape(dtype):
    m, k, n = 1024, 8192, 8  # few output blocks, many K tiles: the dispatcher splits K
    split = choose_split_k(m, k, n)  # this device's SMs and architecture
    assert split > 1
    s, w, x = _case(7, m, k, n, 0.8, dtype)
    hlo = jax.jit(jf.sparse_dense).lower(x, s).as_text()
    assert f"split_k = {split} : i64" in hlo
    assert_close_to_reference(jax.jit(jf.sparse_dense)(x, s), x, w)


@pytest.mark.parametrize("split_k", [1, 4, 16])
def test_split_k_is_deterministic_and_reuses_its_workspace(split_k):
    # The last-arriving block reduces in split order: repeated runs are bit-identical, and the
    # counters the kernel reset (plus the launch's memset) serve the next launch.
    s, w, x = _case(8, 700, 4096, 8, 0.8, DTYPES[1])
    f = jax.jit(lambda v: spmm(v, s.values, s.locations, s.tile_offsets, m=700, k=4096, split_k=split_k))
    first = np.asarray(f(x))
    assert_close_to_reference(first, x, w)
    for _ in range(3):
        np.testing.assert_array_equal(np.asarray(f(x)).view(np.uint16), first.view(np.uint16))


def test_malformed_matrix_never_faults_the_gpu():
    # A matrix rebuilt under jit skips validation and its arrays live on the device, so the handler
    # cannot check them: the kernel treats malformed tiles as empty. The process and the CUDA
    # context must survive (no sticky error): a valid product afterwards is still right.
    s, w, x = _case(13, 384, 320, 9, 0.7, DTYPES[1])
    offs = np.array(s.tile_offsets)
    offs[len(offs) // 2] += 4                  # unaligned
    offs[2] = -8                               # negative / reversed
    offs[-1] = np.asarray(s.values).size + 64  # past the end
    bad = jax.tree.unflatten(jax.tree.structure(s), [s.values, s.locations, jnp.asarray(offs)])
    expected = kernel_view_dense(jf.SparseMatrix.tree_unflatten(
        s.tree_flatten()[1], (np.asarray(s.values), np.asarray(s.locations), offs)))
    for split_k in (1, 3):
        y = jax.jit(lambda v, b: spmm(v, b.values, b.locations, b.tile_offsets, m=384, k=320,
                                      split_k=split_k))(x, bad)
        assert_close_to_reference(np.asarray(y), x, expected)
    assert_close_to_reference(jax.jit(jf.sparse_dense)(x, s), x, w)


def test_dense_and_empty_tiles():
    w = np.zeros((512, 256), np.float32)
    rng = np.random.default_rng(5)
    w[:128, :64] = rng.standard_normal((128, 64))  # fully dense tile
    w[256:, 128:] = rng.standard_normal((256, 128))  # a dense block of tiles
    w[300, 10] = 1.5  # single entry in an otherwise empty tile
    w = w.astype(DTYPES[1])
    s = jf.SparseMatrix.from_dense(w)
    for n in (4, 40, 130):
        x = rng.standard_normal((n, 256)).astype(DTYPES[1])
        assert_close_to_reference(jf.sparse_dense(x, s), x, w)


def test_agrees_with_the_emulated_kernel():
    from jax_flashllm.testing import emulated_spmm

    s, w, x = _case(9, 300, 260, 20, 0.8, DTYPES[0])
    y_gpu = np.asarray(jf.sparse_dense(x, s)).astype(np.float64)
    y_emu = emulated_spmm(s, x, split_k=1).astype(np.float64)
    # Same algorithm; only the Tensor Cores' internal summation order may differ: <= 1 ulp.
    np.testing.assert_allclose(y_gpu, y_emu, rtol=2.0**-9, atol=1e-3)


def test_jit_vmap_grad():
    s, w, x = _case(11, 260, 200, 6, 0.8, DTYPES[1])
    xs = np.stack([x, x[::-1]])
    ys = jax.vmap(jf.sparse_dense, in_axes=(0, None))(xs, s)
    for i in range(2):
        assert_close_to_reference(ys[i], xs[i], w)
    wd = jnp.asarray(w, jnp.float32)
    gx = jax.jit(jax.grad(lambda xx: jnp.sum(jf.sparse_dense(xx, s).astype(jnp.float32) ** 2)))(
        jnp.asarray(x))
    y32 = jnp.asarray(x, jnp.float32) @ wd.T
    np.testing.assert_allclose(np.asarray(gx, np.float32), np.asarray(2 * y32 @ wd),
                               rtol=0.05, atol=0.5)


def test_inside_jitted_while_loop():
    s, w, x = _case(12, 256, 256, 4, 0.9, DTYPES[0])

    @jax.jit
    def loop(x0):
        def body(c):
            i, v = c
            y = jf.sparse_dense(v, s)
            return i + 1, (y / (1 + jnp.max(jnp.abs(y)))).astype(v.dtype)
        return jax.lax.while_loop(lambda c: c[0] < 5, body, (0, x0))[1]

    v = x
    for _ in range(5):
        y = (v.astype(np.float32) @ w.astype(np.float32).T)
        v = (y / (1 + np.abs(y).max())).astype(x.dtype)
    np.testing.assert_allclose(np.asarray(loop(x), np.float32), v.astype(np.float32),
                               rtol=2e-2, atol=2e-3)


_GRAPH_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, jax, jax.numpy as jnp
    import jax_flashllm as jf
    rng = np.random.default_rng(3)
    w = rng.standard_normal((512, 512)).astype(np.float32)
    w[rng.random(w.shape) < 0.8] = 0
    s = jf.SparseMatrix.from_dense(w.astype(np.float16))
    x = rng.standard_normal((8, 512)).astype(np.float16)

    @jax.jit
    def chain(v):  # straight-line: two custom calls around a fusion, one command buffer
        y = jf.sparse_dense(v, s)
        return jf.sparse_dense(jnp.tanh(y), s)

    @jax.jit
    def loop(x0):
        def body(i, v):
            y = jf.sparse_dense(v, s)
            return (y / (1 + jnp.max(jnp.abs(y)))).astype(v.dtype)
        return jax.lax.fori_loop(0, 4, body, x0)

    for _ in range(3):  # warm-up runs instantiate the graphs, later runs replay them
        a, b = np.asarray(chain(x)), np.asarray(loop(x))
    np.savez(sys.argv[1], chain=a.astype(np.float32), loop=b.astype(np.float32))
""")


def _run_graph_script(tmp_path, name, xla_flags):
    out = tmp_path / f"{name}.npz"
    dump = tmp_path / f"{name}_dump"
    env = dict(os.environ, XLA_FLAGS=f"{xla_flags} --xla_dump_to={dump}")
    proc = subprocess.run([sys.executable, "-c", _GRAPH_SCRIPT, str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    if "nknown flag" in proc.stderr:
        pytest.skip(f"this XLA does not know the command-buffer flags: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out), dump


def _computations_calling_kernel(dump_dir):
    """Names of the optimized-HLO computations that contain the flashllm custom call."""
    names = set()
    for path in dump_dir.glob("*after_optimizations.txt"):
        current = None
        for line in path.read_text().splitlines():
            if line.endswith("{") and not line.startswith(" "):
                current = line.split("(")[0].split()[-1]
            elif _ffi.CUDA_TARGET in line and current:
                names.add(current)
    return names


def test_cuda_graphs_capture_the_custom_call(tmp_path):
    # The handler is declared command-buffer compatible; with custom calls enabled in command
    # buffers (and the minimum graph size lowered to 1) XLA captures it into CUDA graphs, and
    # replaying the graphs gives exactly the results of plain launches.
    graphs, dump = _run_graph_script(
        tmp_path, "graphs",
        "--xla_gpu_enable_command_buffer=FUSION,CUSTOM_CALL,WHILE,CONDITIONAL "
        "--xla_gpu_graph_min_graph_size=1")
    plain, _ = _run_graph_script(tmp_path, "plain", "--xla_gpu_enable_command_buffer=")
    names = _computations_calling_kernel(dump)
    assert any("command_buffer" in n for n in names), f"not captured; found in {sorted(names)}"
    for key in ("chain", "loop"):
        np.testing.assert_array_equal(graphs[key], plain[key])


def test_sparse_opt_generates_on_the_gpu():
    # OPT generation end to end on the GPU: the compiled prefill + decode loop runs the CUDA kernel,
    # and greedy tokens equal those of the model's dense copy (the CPU suite's test, here on the GPU).
    import test_generate

    test_generate.test_sparse_model_generates_like_its_dense_copy()
