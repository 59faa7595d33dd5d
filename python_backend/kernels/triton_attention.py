"""Fused HSTU pointwise attention in the Triton language (one request, no bias).

HSTU attention has no softmax: `a_i = sum_j SiLU(q_i.k_j * scale) / N * v_j`.
Without a row-wise max/normaliser, the key range splits into chunks whose
partial sums simply add (no rescaling as in flash-decoding). The kernels use
that to fill the GPU: a prefill of a few thousand tokens or a 256-candidate
rank gives only cdiv(m, BLOCK_M) * H query tiles (16 for 256 candidates,
4 heads), far fewer than an H100's 132 SMs, so each tile's key range is split
over several programs and the fp32 partials are summed once at the end.

Two kernels share one inner loop:
- `_causal_kernel` (prefill / extend): m new tokens over [n0 cached; m new] keys;
  cached keys are all visible, new key j is visible to new query i iff j <= i.
  Cached and new K/V are read in place (no concatenation of the cache).
- `_candidate_kernel` (target-aware ranking): c candidates over n history keys,
  all visible, plus each candidate's own key (the diagonal), never another candidate's.

Both take an optional leading batch dim (requests of one padded size; the
grid's second axis runs over batch x heads). K/V may be strided views of the
cache's `[n, kv_width]` rows; only the last (feature) dim must be contiguous. Importing this module needs `triton`; use
`helmrec.kernels.attention`, which checks for it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# Programs per SM the split aims for: enough to hide load latency, few enough
# that the fp32 partials (split x m x H x dv) stay small.
_PROGRAMS_PER_SM = 2


@triton.jit
def _accumulate(
    acc,
    q,
    k_base,
    v_base,
    stride_kn,
    stride_vn,
    offs_dk,
    offs_dv,
    dk_ok,
    dv_ok,
    start,
    end,
    offs_q,
    qk_scale,
    CAUSAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
    bt_ptr,
    tokens_per_page,
    stride_page,
    PAGED: tl.constexpr,
    WIDE_PAGES: tl.constexpr,
):
    """acc += SiLU(q k^T * scale) v over keys [start, end) of one segment (optionally k <= query index).

    PAGED: key j lives in page `bt_ptr[j // tokens_per_page]`, row `j % tokens_per_page`
    (rows `stride_kn` apart, pages `stride_page` apart; K and V share the row)."""
    for j0 in range(start, end, BLOCK_N):
        offs_n = j0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < end
        if PAGED:
            if WIDE_PAGES:
                # A page holds >= BLOCK_N tokens, so a tile spans at most two: two scalar block-table
                # reads and a select instead of a gather per key in front of every K/V load.
                first = j0 // tokens_per_page
                p0 = tl.load(bt_ptr + first)
                p1 = tl.load(bt_ptr + (tl.minimum(j0 + BLOCK_N, end) - 1) // tokens_per_page)
                page = tl.where(offs_n // tokens_per_page == first, p0, p1).to(tl.int64)
            else:
                page = tl.load(bt_ptr + offs_n // tokens_per_page, mask=n_ok, other=0).to(tl.int64)
            k_rows = page * stride_page + (offs_n % tokens_per_page) * stride_kn
            v_rows = k_rows
        else:
            k_rows = offs_n * stride_kn
            v_rows = offs_n * stride_vn
        k = tl.load(k_base + k_rows[:, None] + offs_dk[None, :], mask=n_ok[:, None] & dk_ok[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = s * tl.sigmoid(s)
        # Padded keys load as zeros and SiLU(0) = 0, so only causality needs a mask.
        if CAUSAL:
            p = tl.where(offs_n[None, :] <= offs_q[:, None], p, 0.0)
        v = tl.load(v_base + v_rows[:, None] + offs_dv[None, :], mask=n_ok[:, None] & dv_ok[None, :], other=0.0)
        acc += tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc


@triton.jit
def _query_tile(
    q_ptr, rows, heads, stride_qb, stride_qm, stride_qh,
    DQK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """The prologue both kernels share: this program's request b, head h and tile of query rows, the
    row/feature masks, and its queries loaded (zeros past `rows` and DQK)."""
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // heads, bh % heads
    offs_q = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_ok, dk_ok, dv_ok = offs_q < rows, offs_dk < DQK, offs_dv < DV
    q = tl.load(q_ptr + b * stride_qb + offs_q[:, None] * stride_qm + h * stride_qh + offs_dk[None, :],
                mask=q_ok[:, None] & dk_ok[None, :], other=0.0)
    return b, h, offs_q, offs_dk, offs_dv, q_ok, dk_ok, dv_ok, q


@triton.jit
def _causal_kernel(
    q_ptr, kc_ptr, vc_ptr, kn_ptr, vn_ptr, out_ptr,
    m, n0, chunk, heads, qk_scale, norm_scale,
    stride_qb, stride_qm, stride_qh, stride_kcb, stride_kcn, stride_kch, stride_vcb, stride_vcn, stride_vch,
    stride_knb, stride_knn, stride_knh, stride_vnb, stride_vnn, stride_vnh,
    stride_os, stride_ob, stride_om, stride_oh,
    DQK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
    bt_ptr, len_ptr, tokens_per_page, stride_btb, PAGED: tl.constexpr, WIDE_PAGES: tl.constexpr,
):
    """PAGED: request b's cached keys are its first `len_ptr[b]` tokens, in the pages its
    block-table row lists; kc/vc are the pool's pages as [page, token, head, d] (see
    `_candidate_kernel`)."""
    pid_m, split = tl.program_id(0), tl.program_id(2)
    b, h, offs_q, offs_dk, offs_dv, q_ok, dk_ok, dv_ok, q = _query_tile(
        q_ptr, m, heads, stride_qb, stride_qm, stride_qh, DQK, DV, BLOCK_DK, BLOCK_DV, BLOCK_M)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    # This program's chunk [g0, g1) of the global key order: n0 cached keys, then the m new ones.
    g0 = split * chunk
    g1 = g0 + chunk
    last_q = tl.minimum(pid_m * BLOCK_M + BLOCK_M, m)  # new keys at or past this index are never visible
    if PAGED:
        n0 = tl.load(len_ptr + b).to(tl.int32)
        kc_base = kc_ptr + h * stride_kch
        vc_base = vc_ptr + h * stride_vch
    else:
        kc_base = kc_ptr + b * stride_kcb + h * stride_kch
        vc_base = vc_ptr + b * stride_vcb + h * stride_vch
    acc = _accumulate(acc, q, kc_base, vc_base, stride_kcn, stride_vcn, offs_dk, offs_dv, dk_ok, dv_ok, g0,
                      tl.minimum(g1, n0), offs_q, qk_scale, CAUSAL=False, BLOCK_N=BLOCK_N, PRECISION=PRECISION,
                      bt_ptr=bt_ptr + b * stride_btb, tokens_per_page=tokens_per_page, stride_page=stride_kcb,
                      PAGED=PAGED, WIDE_PAGES=WIDE_PAGES)
    # New keys below the tile's first query are visible to all its rows; only the rest needs the causal mask.
    kn_base = kn_ptr + b * stride_knb + h * stride_knh
    vn_base = vn_ptr + b * stride_vnb + h * stride_vnh
    lo, hi = tl.maximum(g0 - n0, 0), tl.minimum(g1 - n0, last_q)
    first_q = pid_m * BLOCK_M
    acc = _accumulate(acc, q, kn_base, vn_base, stride_knn, stride_vnn, offs_dk, offs_dv, dk_ok, dv_ok,
                      lo, tl.minimum(hi, first_q), offs_q, qk_scale, CAUSAL=False, BLOCK_N=BLOCK_N, PRECISION=PRECISION,
                      bt_ptr=0, tokens_per_page=1, stride_page=0, PAGED=False, WIDE_PAGES=False)
    acc = _accumulate(acc, q, kn_base, vn_base, stride_knn, stride_vnn, offs_dk, offs_dv, dk_ok, dv_ok,
                      tl.maximum(lo, first_q), hi, offs_q, qk_scale, CAUSAL=True, BLOCK_N=BLOCK_N, PRECISION=PRECISION,
                      bt_ptr=0, tokens_per_page=1, stride_page=0, PAGED=False, WIDE_PAGES=False)
    out = out_ptr + split * stride_os + b * stride_ob + offs_q[:, None] * stride_om + h * stride_oh + offs_dv[None, :]
    tl.store(out, (acc * norm_scale).to(out_ptr.dtype.element_ty), mask=q_ok[:, None] & dv_ok[None, :])


@triton.jit
def _candidate_kernel(
    q_ptr, kh_ptr, vh_ptr, ks_ptr, vs_ptr, out_ptr,
    c, n, chunk, heads, qk_scale, norm_scale,
    stride_qb, stride_qm, stride_qh, stride_khb, stride_khn, stride_khh, stride_vhb, stride_vhn, stride_vhh,
    stride_ksb, stride_ksn, stride_ksh, stride_vsb, stride_vsn, stride_vsh,
    stride_os, stride_ob, stride_om, stride_oh,
    DQK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
    bt_ptr, len_ptr, tokens_per_page, stride_btb, PAGED: tl.constexpr, WIDE_PAGES: tl.constexpr,
):
    """PAGED: request b's history is its first `len_ptr[b]` tokens, in the pages its block-table
    row `bt_ptr + b * stride_btb` lists; kh/vh are the pool's pages as [page, token, head, d]
    (so stride_khb is the page stride and K and V of a token share its row)."""
    split = tl.program_id(2)
    b, h, offs_q, offs_dk, offs_dv, q_ok, dk_ok, dv_ok, q = _query_tile(
        q_ptr, c, heads, stride_qb, stride_qm, stride_qh, DQK, DV, BLOCK_DK, BLOCK_DV, BLOCK_M)
    qmask = q_ok[:, None] & dk_ok[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    g0 = split * chunk
    if PAGED:
        n = tl.load(len_ptr + b).to(tl.int32)
        kh_base = kh_ptr + h * stride_khh
        vh_base = vh_ptr + h * stride_vhh
    else:
        kh_base = kh_ptr + b * stride_khb + h * stride_khh
        vh_base = vh_ptr + b * stride_vhb + h * stride_vhh
    acc = _accumulate(acc, q, kh_base, vh_base, stride_khn, stride_vhn, offs_dk, offs_dv, dk_ok, dv_ok, g0,
                      tl.minimum(g0 + chunk, n), offs_q, qk_scale, CAUSAL=False, BLOCK_N=BLOCK_N, PRECISION=PRECISION,
                      bt_ptr=bt_ptr + b * stride_btb, tokens_per_page=tokens_per_page, stride_page=stride_khb,
                      PAGED=PAGED, WIDE_PAGES=WIDE_PAGES)
    if split == 0:  # the diagonal (candidate attends to itself) is added once
        k_self = tl.load(ks_ptr + b * stride_ksb + offs_q[:, None] * stride_ksn + h * stride_ksh + offs_dk[None, :],
                         mask=qmask, other=0.0)
        s = tl.sum(q.to(tl.float32) * k_self.to(tl.float32), axis=1) * qk_scale
        v_self = tl.load(vs_ptr + b * stride_vsb + offs_q[:, None] * stride_vsn + h * stride_vsh + offs_dv[None, :],
                         mask=q_ok[:, None] & dv_ok[None, :], other=0.0)
        acc += (s * tl.sigmoid(s))[:, None] * v_self.to(tl.float32)
    out = out_ptr + split * stride_os + b * stride_ob + offs_q[:, None] * stride_om + h * stride_oh + offs_dv[None, :]
    tl.store(out, (acc * norm_scale).to(out_ptr.dtype.element_ty), mask=q_ok[:, None] & dv_ok[None, :])


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1  # the Triton interpreter (TRITON_INTERPRET=1) runs programs one by one on the CPU
    return torch.cuda.get_device_properties(device).multi_processor_count


@dataclass(frozen=True)
class Tiles:
    """Launch shape of one kernel call: query rows and keys per tile, warps, pipeline stages.

    Chunks of a split key range are multiples of `block_n`, so a key tile never straddles two chunks.
    """

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def default_tiles(m: int, d: int, device: torch.device) -> Tiles:
    """Tiles for m queries of head dim d.

    Short query sets (extend by a few tokens) use tiles no taller than the set
    so little work is masked out. Otherwise 64 x 32 tiles with 4 warps: on the
    H100 at d = 128 they beat 128 x 64 / 8 warps by 1.15-1.5x on 4096- and
    16384-token prefills and 256 candidates over 4096 keys, and are within 7%
    of the best of 12 shapes (bench/gpu.py --sweep-tiles, docs/gpu.md).
    """
    stages = 3 if device.type == "cuda" else 1
    if m <= 16:
        return Tiles(16, 64, 4, stages)
    if m <= 32:
        return Tiles(32, 64, 4, stages)
    return Tiles(64, 32 if d >= 64 else 64, 4, stages)


def _split(num_keys: int, query_tiles: int, block_n: int, device: torch.device, splits: int | None) -> tuple[int, int]:
    """(number of key chunks, chunk length): enough programs to cover the SMs, no empty chunk."""
    blocks = max(1, triton.cdiv(num_keys, block_n))
    want = splits if splits is not None else triton.cdiv(_PROGRAMS_PER_SM * _num_sms(device), query_tiles)
    want = max(1, min(want, blocks))
    chunk = triton.cdiv(blocks, want) * block_n
    return max(1, triton.cdiv(num_keys, chunk)), chunk


def _precision(dtype: torch.dtype) -> str:
    """fp32 inputs keep full precision (no TF32), so they can match the fp32 reference tightly."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _launch(kernel, q, k_a, v_a, k_b, v_b, m: int, n_a: int, num_keys: int, qk_scale: float, norm_scale: float,
            splits: int | None, tiles: Tiles | None, **extra) -> torch.Tensor:
    """Run `kernel` on [B, tokens, H, d] tensors (3-d ones are a batch of one) -> [B, m, H, dv];
    `extra` are the kernel's own further arguments (the paged history's block table)."""
    batched = q.dim() == 4
    if not batched:
        q, k_a, v_a, k_b, v_b = (t.unsqueeze(0) for t in (q, k_a, v_a, k_b, v_b))
    bsz, h, dqk, dv = q.shape[0], q.shape[2], q.shape[3], v_a.shape[3]
    t = tiles or default_tiles(m, max(dqk, dv), q.device)
    if extra.get("PAGED"):
        extra["WIDE_PAGES"] = extra["tokens_per_page"] >= t.block_n
    query_tiles = triton.cdiv(m, t.block_m)
    nsplit, chunk = _split(num_keys, query_tiles * bsz * h, t.block_n, q.device, splits)
    out = torch.empty((nsplit, bsz, m, h, dv), dtype=q.dtype if nsplit == 1 else torch.float32, device=q.device)
    kernel[(query_tiles, bsz * h, nsplit)](
        q, k_a, v_a, k_b, v_b, out,
        m, n_a, chunk, h, float(qk_scale), float(norm_scale),
        *q.stride()[:3], *k_a.stride()[:3], *v_a.stride()[:3], *k_b.stride()[:3], *v_b.stride()[:3],
        *out.stride()[:4],
        DQK=dqk, DV=dv, BLOCK_DK=max(16, triton.next_power_of_2(dqk)), BLOCK_DV=max(16, triton.next_power_of_2(dv)),
        BLOCK_M=t.block_m, BLOCK_N=t.block_n, PRECISION=_precision(q.dtype),
        num_warps=t.num_warps, num_stages=t.num_stages, **extra,
    )
    out = out[0] if nsplit == 1 else out.sum(0).to(q.dtype)
    return out if batched else out[0]


def causal_attention_triton(q, k_ctx, v_ctx, k_new, v_new, qk_scale: float, norm_scale: float,
                            splits: int | None = None, tiles: Tiles | None = None) -> torch.Tensor:
    """See `attention.causal_attention`; inputs already checked. `tiles` overrides `default_tiles` (tile sweeps)."""
    m, n0 = q.shape[-3], k_ctx.shape[-3]
    return _launch(_causal_kernel, q, k_ctx, v_ctx, k_new, v_new, m, n0, n0 + m, qk_scale, norm_scale, splits, tiles,
                   bt_ptr=q, len_ptr=q, tokens_per_page=1, stride_btb=0, PAGED=False, WIDE_PAGES=False)


def paged_causal_attention_triton(q, k_pages, v_pages, block_table, lengths, k_new, v_new, qk_scale: float,
                                  norm_scale: float, splits: int | None = None) -> torch.Tensor:
    """See `attention.paged_causal_attention`; inputs already checked. Keys split over programs as
    for the bucket's widest context (the block table's width) plus the m new tokens."""
    m, tpp = q.shape[-3], k_pages.shape[1]
    return _launch(_causal_kernel, q, k_pages, v_pages, k_new, v_new, m, 0, block_table.shape[1] * tpp + m, qk_scale,
                   norm_scale, splits, None, bt_ptr=block_table, len_ptr=lengths, tokens_per_page=tpp,
                   stride_btb=block_table.stride(0), PAGED=True)


def candidate_attention_triton(q, k_hist, v_hist, k_self, v_self, qk_scale: float, norm_scale: float,
                               splits: int | None = None, tiles: Tiles | None = None) -> torch.Tensor:
    """See `attention.candidate_attention`; inputs already checked. `tiles` overrides `default_tiles` (tile sweeps)."""
    c, n = q.shape[-3], k_hist.shape[-3]
    return _launch(_candidate_kernel, q, k_hist, v_hist, k_self, v_self, c, n, n, qk_scale, norm_scale, splits, tiles,
                   bt_ptr=q, len_ptr=q, tokens_per_page=1, stride_btb=0, PAGED=False, WIDE_PAGES=False)


def paged_candidate_attention_triton(q, k_pages, v_pages, block_table, lengths, k_self, v_self, qk_scale: float,
                                     norm_scale: float, splits: int | None = None) -> torch.Tensor:
    """See `attention.paged_candidate_attention`; inputs already checked. The key range split over
    programs is that of the block table's width (the bucket), so one graph serves every length in it."""
    c, tpp = q.shape[-3], k_pages.shape[1]
    return _launch(_candidate_kernel, q, k_pages, v_pages, k_self, v_self, c, 0, block_table.shape[1] * tpp, qk_scale,
                   norm_scale, splits, None, bt_ptr=block_table, len_ptr=lengths, tokens_per_page=tpp,
                   stride_btb=block_table.stride(0), PAGED=True)

