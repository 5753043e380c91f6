"""INDEPENDENT reference implementations, written from the published algorithms.

Nothing here imports deos_dsl.  Each function follows its paper's/released code's own
natural style and token order; every reference also returns the ORIGINAL position of each
output token (-1 for a newly created token) so tests can compare after sorting.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def naive_attention_probs(q: torch.Tensor, k: torch.Tensor, causal: bool) -> torch.Tensor:
    """Full attention probabilities `[B, H, N, N]` of a naive (non-fused) attention."""
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[2]
        logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return logits.softmax(dim=-1)


# --------------------------------------------------------------------------------------
# ToMe (Bolya et al. 2023): bipartite soft matching + size-weighted merge.
# --------------------------------------------------------------------------------------
def tome_bipartite_merge(x, metric, r, size=None, class_token=False):
    """One ToMe step.  Returns `(x_merged, size_merged, origin)`; ToMe's output order is
    [unmerged A tokens, all B tokens]."""
    B, T, C = x.shape
    r = min(r, (T - int(class_token)) // 2)
    if size is None:
        size = torch.ones(B, T, 1, dtype=x.dtype)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[..., ::2, :], metric[..., 1::2, :]
    scores = a @ b.transpose(-1, -2)
    if class_token:
        scores[..., 0, :] = -math.inf
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
    unm_idx = edge_idx[..., r:, :]
    src_idx = edge_idx[..., :r, :]
    dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
    if class_token:
        unm_idx = unm_idx.sort(dim=1)[0]

    def merge(t, mode):
        src, dst = t[..., ::2, :], t[..., 1::2, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)
        return torch.cat([unm, dst], dim=1)

    merged = merge(x * size, "sum")
    new_size = merge(size, "sum")
    positions = torch.arange(T)
    origin = torch.cat([positions[::2][unm_idx[..., 0]], positions[1::2].expand(B, -1)], dim=1)
    return merged / new_size, new_size, origin


# --------------------------------------------------------------------------------------
# FastV (Chen et al. 2024): prune image tokens by the last token's attention at layer K.
# --------------------------------------------------------------------------------------
def fastv_prune(hidden, attn, image_start, image_len, ratio):
    """Per example: mean the layer's attention over heads, take the last row, keep the
    `round(image_len * (1 - ratio))` image tokens it attends most, keep everything else."""
    outs, keeps = [], []
    for b in range(hidden.shape[0]):
        last_row = attn[b].mean(dim=0)[-1]
        image_scores = last_row[image_start:image_start + image_len]
        top = image_scores.topk(round(image_len * (1 - ratio))).indices + image_start
        keep = torch.cat([torch.arange(image_start), top, torch.arange(image_start + image_len, hidden.shape[1])])
        keep = keep.sort().values
        outs.append(hidden[b, keep])
        keeps.append(keep)
    return torch.stack(outs), torch.stack(keeps)


# --------------------------------------------------------------------------------------
# EViT (Liang et al. 2022): keep attentive tokens, fuse the inattentive ones.
# --------------------------------------------------------------------------------------
def evit_fuse(x, attn, keep_rate):
    """EViT block output: [CLS, top-attended tokens (descending attention), fused token],
    fused token = sum of inattentive tokens weighted by their (unnormalised) CLS attention."""
    B, N, C = x.shape
    left = math.ceil(keep_rate * (N - 1))
    cls_attn = attn[:, :, 0, 1:].mean(dim=1)
    _, idx = torch.topk(cls_attn, left, dim=1, largest=True, sorted=True)
    non_cls = x[:, 1:]
    kept = torch.gather(non_cls, 1, idx[..., None].expand(-1, -1, C))
    everything = torch.arange(N - 1).expand(B, -1)
    is_top = torch.zeros(B, N - 1, dtype=torch.bool).scatter(1, idx, True)
    compl = everything[~is_top].reshape(B, N - 1 - left)
    non_top = torch.gather(non_cls, 1, compl[..., None].expand(-1, -1, C))
    extra = (non_top * torch.gather(cls_attn, 1, compl)[..., None]).sum(dim=1, keepdim=True)
    origin = torch.cat([torch.zeros(B, 1, dtype=torch.long), idx + 1, torch.full((B, 1), -1)], dim=1)
    return torch.cat([x[:, :1], kept, extra], dim=1), origin


# --------------------------------------------------------------------------------------
# 2x2 average pooling on the token grid (LLaVA-style projector pooling).
# --------------------------------------------------------------------------------------
def grid_avg_pool(tokens, grid, window=(2, 2)):
    """`tokens [B, H*W, C]` row-major -> `[B, (H/wh)*(W/ww), C]` by average pooling."""
    B, _, C = tokens.shape
    h, w = grid
    image = tokens.transpose(1, 2).reshape(B, C, h, w)
    pooled = F.avg_pool2d(image, kernel_size=window, stride=window)
    return pooled.flatten(2).transpose(1, 2)


# --------------------------------------------------------------------------------------
# VisionZip (Yang et al. 2025): dominant tokens + contextual tokens (released code).
# --------------------------------------------------------------------------------------
def visionzip(hidden, attn, metric, dominant_num, contextual_num):
    """Returns `(tokens, origin)`: [CLS + dominant tokens, contextual tokens]; each
    contextual token is `target + mean(tokens assigned to it)`."""
    B, N, C = hidden.shape
    cls_attention = attn[:, :, 0, 1:].sum(dim=1)
    topk = cls_attention.topk(dominant_num, dim=1).indices + 1
    all_indices = torch.cat([torch.zeros(B, 1, dtype=topk.dtype), topk], dim=1)
    mask = torch.ones(B, N, dtype=torch.bool).scatter_(1, all_indices, False)
    dominant = hidden.masked_select(~mask[..., None]).view(B, dominant_num + 1, C)
    dominant_origin = torch.arange(N).expand(B, -1)[~mask].view(B, dominant_num + 1)

    n_rest = N - (dominant_num + 1)
    metric_f = metric[mask].view(B, n_rest, metric.shape[2])
    hidden_f = hidden.masked_select(mask[..., None]).view(B, n_rest, C)
    origin_f = torch.arange(N).expand(B, -1)[mask].view(B, n_rest)
    metric_n = metric_f / metric_f.norm(dim=-1, keepdim=True)
    step = max(1, n_rest // contextual_num)
    targets = torch.arange(0, n_rest, step)[:contextual_num]
    others = ~torch.isin(torch.arange(n_rest), targets)
    similarity = torch.bmm(metric_n[:, others], metric_n[:, targets].transpose(1, 2))
    assign = torch.zeros(B, int(others.sum()), len(targets), dtype=hidden.dtype)
    assign.scatter_(2, similarity.argmax(dim=2)[..., None], 1)
    counts = assign.sum(dim=1).clamp(min=1)[..., None]
    aggregated = torch.bmm(assign.transpose(1, 2), hidden_f[:, others]) / counts
    contextual = hidden_f[:, targets] + aggregated
    return torch.cat([dominant, contextual], dim=1), torch.cat([dominant_origin, origin_f[:, targets]], dim=1)


# --------------------------------------------------------------------------------------
# DESIGN 1.1, literally, one example at a time with explicit sets and loops (s = 1).
# --------------------------------------------------------------------------------------
def design_operator(x, reducible, score, k, gamma, tau, rho, nu, feats, sizes=None):
    """`x [N, D]` one example, `reducible` list of positions, `score [|V|]`, `feats
    [|V|, d]`.  Returns `(Y over kept in original order incl. protected, kept positions,
    sizes)`.  Scores must be non-negative (shat = s / mean s).  `sizes [N]` (default 1)
    applies the carried-in-size generalisation
    `Y_i = (s_i A'_i + gamma sum_j P_ji s_j D_j) / (s_i + gamma sum_j P_ji s_j)^nu`."""
    s = torch.ones(x.shape[0], dtype=x.dtype) if sizes is None else sizes
    V = list(reducible)
    order = sorted(range(len(V)), key=lambda j: (-float(score[j]), j))
    A = sorted(order[:k])
    Dset = sorted(order[k:])
    shat = score / score.mean()
    out, new_sizes = {}, {}
    for p in range(x.shape[0]):
        if p not in V:
            out[p], new_sizes[p] = x[p], s[p]
    P = torch.zeros(len(Dset), len(A), dtype=x.dtype)
    for r, j in enumerate(Dset):
        if not A:
            break
        S = torch.stack([F.cosine_similarity(feats[j], feats[i], dim=0) for i in A])
        if tau == 0:
            P[r, int(torch.argmax(S))] = 1.0
        elif math.isinf(tau):
            P[r] = 1.0 / len(A)
        else:
            P[r] = torch.softmax(S / tau, dim=0)
    for c, i in enumerate(A):
        a = (1 + rho * shat[i]) * x[V[i]]
        mass = sum(P[r, c] * s[V[j]] for r, j in enumerate(Dset)) if Dset else torch.zeros((), dtype=x.dtype)
        content = sum(P[r, c] * s[V[j]] * x[V[j]] for r, j in enumerate(Dset)) if Dset else torch.zeros_like(a)
        out[V[i]] = (s[V[i]] * a + gamma * content) / (s[V[i]] + gamma * mass) ** nu
        new_sizes[V[i]] = s[V[i]] + gamma * mass
    kept = sorted(out)
    y = torch.stack([out[p] for p in kept]) if kept else x.new_zeros(0, x.shape[1])
    return y, kept, torch.tensor([float(new_sizes[p]) for p in kept], dtype=x.dtype)
