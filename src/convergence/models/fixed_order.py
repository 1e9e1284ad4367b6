"""Matrix products whose every element is summed in one fixed order.

A BLAS picks its summation order by shape: MKL, for one, computes the rows left over
after its 4-row tiles with another kernel, so a row's last bits depend on how many rows
share the call (measured on an AMD EPYC: rows 4k..4k+3 of a call of 4k+1..4k+3 rows
differ from the same rows in a larger call). The analytic model promises that a cell's
floats do not depend on which cells share its model calls, so its products cannot come
from a BLAS.

Here every output element is one chain of fused multiply-adds over k = 0, 1, ..., K-1,
starting from the output's initial value: ``c = fma(a[k], b[k], c)``. Tiling over rows
and columns, blocking over k and the number of threads only decide *when* a chain is
advanced, never the order of its terms, and ``llvm.fma`` rounds once whatever the CPU
(hardware FMA or the C library's ``fma``). So an element's bits depend on its own row of
``a``, on ``b`` and on nothing else: not on the call's size, the row's position, the
thread count, the CPU's vector width or ATen's kernel variant. The micro-kernel keeps a
6x8 block of outputs in vector registers (llvmlite IR through numba, vectors of LANES
doubles): on 2 AMD EPYC cores it runs at the speed of MKL's ``dgemm`` on the analytic
model's shapes; on AVX-512 MKL stays faster on calls of few rows
(``benchmarks/bench_fixed_order.py``).
"""

from __future__ import annotations

import concurrent.futures
import threading

import numpy as np
import torch
from llvmlite import binding, ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: columns of one packed panel: two <4 x double> vectors
PANEL = 8
#: rows of the largest register tile (12 accumulators of 4 doubles)
TILE_ROWS = 6
#: k-block: a row tile's block (6 x 256 doubles, 12 KB) stays in L1 across a panel group
K_BLOCK = 256
#: a panel group's k-blocks together (16 panels of 256 x 8 doubles) stay in L2
GROUP_BYTES = 256 * 1024

_I64 = ir.IntType(64)
#: doubles per vector register: a panel row is two <4 x double> (AVX2) or one <8 x double>
#: where the CPU numba compiles for has AVX-512 (twice the work per instruction there).
#: Each lane is its own element's fma chain, so the width changes speed, never bits.
LANES = 8 if binding.get_host_cpu_features().get("avx512f", False) else 4
_HALVES = PANEL // LANES
_VEC = ir.VectorType(ir.DoubleType(), LANES)


def _const(i: int) -> ir.Constant:
    return ir.Constant(_I64, i)


def _tile_kernel(rows: int):
    """C[rows x 8] = fma-chains over k of A[rows x kc] (row stride lda) and one packed
    panel block (kc x 8, contiguous), C with row stride ldc; all addresses in bytes."""

    @intrinsic
    def tile(typingctx, a_addr, lda, b_addr, c_addr, ldc, kc):
        sig = types.void(types.int64, types.int64, types.int64, types.int64, types.int64,
                         types.int64)

        def codegen(context, builder, signature, args):
            a_addr, lda, b_addr, c_addr, ldc, kc = args
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_VEC, [_VEC, _VEC, _VEC]),
                f"llvm.fma.v{LANES}f64")
            f64p, vecp = ir.DoubleType().as_pointer(), _VEC.as_pointer()
            a0 = builder.inttoptr(a_addr, f64p)
            b0 = builder.inttoptr(b_addr, f64p)
            c0 = builder.inttoptr(c_addr, f64p)

            def c_half(i: int, h: int):
                row = builder.gep(c0, [builder.mul(ldc, _const(i))])
                return builder.bitcast(builder.gep(row, [_const(LANES * h)]), vecp)

            start = [builder.load(c_half(i, h), align=8) for i in range(rows)
                     for h in range(_HALVES)]
            entry = builder.block
            loop = builder.append_basic_block("k_loop")
            done = builder.append_basic_block("k_done")
            builder.cbranch(builder.icmp_signed(">", kc, _const(0)), loop, done)

            builder.position_at_end(loop)
            k = builder.phi(_I64)
            k.add_incoming(_const(0), entry)
            acc = []
            for value in start:
                phi = builder.phi(_VEC)
                phi.add_incoming(value, entry)
                acc.append(phi)
            b_row = builder.gep(b0, [builder.mul(k, _const(PANEL))])
            b = [builder.load(builder.bitcast(builder.gep(b_row, [_const(LANES * h)]), vecp),
                              align=8) for h in range(_HALVES)]
            mask = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
            nxt = []
            for i in range(rows):
                a = builder.load(builder.gep(a0, [builder.add(builder.mul(lda, _const(i)), k)]))
                a = builder.insert_element(ir.Constant(_VEC, ir.Undefined), a,
                                           ir.Constant(ir.IntType(32), 0))
                a = builder.shuffle_vector(a, ir.Constant(_VEC, ir.Undefined), mask)
                nxt += [builder.call(fma, [a, b[h], acc[_HALVES * i + h]])
                        for h in range(_HALVES)]
            k1 = builder.add(k, _const(1))
            body = builder.block
            k.add_incoming(k1, body)
            for phi, value in zip(acc, nxt, strict=True):
                phi.add_incoming(value, body)
            builder.cbranch(builder.icmp_signed("<", k1, kc), loop, done)

            builder.position_at_end(done)
            final = []
            for first, last in zip(start, nxt, strict=True):
                out = builder.phi(_VEC)
                out.add_incoming(first, entry)
                out.add_incoming(last, body)
                final.append(out)
            for n, out in enumerate(final):
                builder.store(out, c_half(n // _HALVES, n % _HALVES), align=8)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile6, _tile5, _tile4, _tile3, _tile2, _tile1 = (_tile_kernel(r) for r in range(6, 0, -1))


@njit(nogil=True, cache=True)
def _tile(rows, a_addr, lda, b_addr, c_addr, ldc, kc):
    """The register tile of ``rows`` rows (1..TILE_ROWS)."""
    if rows == 6:
        _tile6(a_addr, lda, b_addr, c_addr, ldc, kc)
    elif rows == 5:
        _tile5(a_addr, lda, b_addr, c_addr, ldc, kc)
    elif rows == 4:
        _tile4(a_addr, lda, b_addr, c_addr, ldc, kc)
    elif rows == 3:
        _tile3(a_addr, lda, b_addr, c_addr, ldc, kc)
    elif rows == 2:
        _tile2(a_addr, lda, b_addr, c_addr, ldc, kc)
    else:
        _tile1(a_addr, lda, b_addr, c_addr, ldc, kc)


@njit(nogil=True, cache=True)
def _panels(a, packed, c, first, last):
    """c[:, 8p:8p+8] += a @ panel p for p in [first, last) (fma-chains over k).

    Panels go in groups whose k-blocks fit in L2 (GROUP_BYTES); within a group, each row
    tile of ``a`` is read once per k-block and swept across the group's panels, so the
    outputs of a tile are written in runs of the group's width. k-blocks advance in
    order for every element, which is all the summation order depends on."""
    m, k_total = a.shape
    ldc = c.shape[1]
    a_addr, b_addr, c_addr = a.ctypes.data, packed.ctypes.data, c.ctypes.data
    group = max(1, GROUP_BYTES // (min(K_BLOCK, k_total) * PANEL * 8))
    for g in range(first, last, group):
        g_end = min(g + group, last)
        for k0 in range(0, k_total, K_BLOCK):
            kc = min(K_BLOCK, k_total - k0)
            for row in range(0, m, TILE_ROWS):
                rows = min(TILE_ROWS, m - row)
                aa = a_addr + (row * k_total + k0) * 8
                for p in range(g, g_end):
                    _tile(rows, aa, k_total, b_addr + (p * k_total + k0) * PANEL * 8,
                          c_addr + (row * ldc + p * PANEL) * 8, ldc, kc)


@njit(nogil=True, cache=True)
def _sum_squares(a, out):
    """out[i] = sum of a[i]**2 in a fixed order: four interleaved running sums (element k
    goes to sum k mod 4, in order), added as (s0 + s1) + (s2 + s3), then the tail."""
    m, n = a.shape
    quads = n // 4
    for i in range(m):
        s0 = s1 = s2 = s3 = 0.0
        for q in range(quads):
            k = 4 * q
            s0 += a[i, k] * a[i, k]
            s1 += a[i, k + 1] * a[i, k + 1]
            s2 += a[i, k + 2] * a[i, k + 2]
            s3 += a[i, k + 3] * a[i, k + 3]
        total = (s0 + s1) + (s2 + s3)
        for k in range(4 * quads, n):
            total += a[i, k] * a[i, k]
        out[i] = total


class PackedColumns:
    """A fixed right-hand matrix (K x N), packed once into panels of 8 columns (the last
    one padded with zeros) laid out k-major, as the micro-kernel reads them."""

    def __init__(self, b: np.ndarray):
        k, n = b.shape
        self.k, self.n = k, n
        self.panels = -(-n // PANEL)
        padded = np.zeros((k, self.panels * PANEL))
        padded[:, :n] = b
        self.data = np.ascontiguousarray(
            padded.reshape(k, self.panels, PANEL).transpose(1, 0, 2))


_POOL_LOCK = threading.Lock()
_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def _pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """One shared pool (the kernels release the GIL), grown when more threads are asked."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < workers:
            _POOL = concurrent.futures.ThreadPoolExecutor(workers, "fixed-order")
        return _POOL


def matmul(a: torch.Tensor, b: PackedColumns, out: torch.Tensor | None = None) -> torch.Tensor:
    """``out + a @ b`` (``out`` defaults to zeros), float64, each element summed in the
    fixed order above; the columns are split over torch's thread count. A contiguous
    float64 ``out`` whose columns fill whole panels is updated in place (no copy)."""
    a_np = a.detach().to(torch.float64).contiguous().numpy()
    m = a_np.shape[0]
    if a_np.shape[1] != b.k:
        raise ValueError(f"matmul: a has {a_np.shape[1]} columns, b has {b.k} rows")
    width = b.panels * PANEL
    if (out is not None and out.dtype == torch.float64 and out.is_contiguous()
            and out.device.type == "cpu" and tuple(out.shape) == (m, width)):
        c = out.numpy()
    else:
        c = np.zeros((m, width))
        if out is not None:
            c[:, :b.n] = out.detach().to(torch.float64).cpu().numpy()
    workers = max(1, min(torch.get_num_threads(), b.panels))
    if m and workers > 1:
        bounds = np.linspace(0, b.panels, workers + 1).round().astype(int)
        jobs = [_pool(workers).submit(_panels, a_np, b.data, c, int(lo), int(hi))
                for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        for job in jobs:
            job.result()
    elif m:
        _panels(a_np, b.data, c, 0, b.panels)
    result = torch.from_numpy(c)
    return result if width == b.n else result[:, :b.n]


def sum_squares(a: torch.Tensor) -> torch.Tensor:
    """Each row's sum of squares, in a fixed order (float64)."""
    a_np = a.detach().to(torch.float64).contiguous().numpy()
    out = np.empty(a_np.shape[0])
    _sum_squares(a_np, out)
    return torch.from_numpy(out)
