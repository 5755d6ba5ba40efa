"""Helpers for the model tests: PyTorch references with the published heads."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def torch_forward(ckpt, ids: np.ndarray, mask: np.ndarray):
    """Run the PyTorch reference; returns (hidden list [emb, layer_1..L], final, backbone output).

    Position ids are cumsum(mask) - 1 so left padding sees unpadded positions
    (what the JAX port does; transformers' default would be arange(T)).
    """
    ref = ckpt.torch_model
    captured = []
    layers = ref.backbone.layers
    hooks = [layers[i].register_forward_hook(lambda m, a, o: captured.append(o[0] if isinstance(o, tuple) else o))
             for i in range(len(layers))]
    emb_mod = ref.backbone.get_input_embeddings()
    hooks.append(emb_mod.register_forward_hook(lambda m, a, o: captured.insert(0, o)))
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    try:
        with torch.no_grad():
            out = ref.backbone(input_ids=torch.as_tensor(ids, dtype=torch.long),
                               attention_mask=torch.as_tensor(mask, dtype=torch.long),
                               position_ids=torch.as_tensor(pos, dtype=torch.long))
    finally:
        for h in hooks:
            h.remove()
    return [c.float().numpy() for c in captured], out.last_hidden_state.float().numpy()


def torch_reward(ckpt, ids: np.ndarray, mask: np.ndarray, pooling: str = "last", pad_id: int = 0):
    """The published heads, written as their authors did (OpenAssistant / Starling / transformers)."""
    _, h = torch_forward(ckpt, ids, mask)
    h = torch.as_tensor(h)
    m = torch.as_tensor(mask)
    b = ids.shape[0]
    if pooling == "last":  # OpenAssistant: attention_mask.cumsum(dim=1).argmax(dim=1)
        idx = m.cumsum(dim=1).argmax(dim=1)
        pooled = h[torch.arange(b), idx]
    elif pooling == "mean":
        pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    else:  # Starling: c_ind = first PAD index (else T); rewards[i, c_ind - 1]
        rows = []
        for i in range(b):
            c_inds = (torch.as_tensor(ids[i]) == pad_id).nonzero()
            c_ind = c_inds[0].item() if len(c_inds) > 0 else ids.shape[1]
            rows.append(h[i, c_ind - 1])
        pooled = torch.stack(rows)
    with torch.no_grad():
        return ckpt.torch_model.head.float()(pooled)[:, 0].numpy()


def torch_logprob(ckpt, ids: np.ndarray, mask: np.ndarray):
    """sum_t log p(x_t | x_<t) from the PyTorch LM head, over pairs of real tokens."""
    _, h = torch_forward(ckpt, ids, mask)
    with torch.no_grad():
        logits = ckpt.torch_model.lm_head.float()(torch.as_tensor(h))
        logp = torch.log_softmax(logits[:, :-1].double(), -1)
        terms = logp.gather(-1, torch.as_tensor(ids[:, 1:], dtype=torch.long)[..., None])[..., 0]
        pair = torch.as_tensor((mask[:, 1:] > 0) & (mask[:, :-1] > 0))
        return (terms * pair).sum(-1).numpy()


def torch_onehot_value_and_grad(ckpt, onehot: np.ndarray, mask: np.ndarray, kind: str):
    """PyTorch autograd reference for a score of relaxed one-hot tokens, in float64.

    Each row is scored alone on its real tokens only (contiguous, left or
    right padded), so the reference needs no padding mask (transformers'
    float64 eager attention turns a fully masked left-pad row into NaN); the
    gradient is zero at padding by construction. The backbone runs on
    inputs_embeds = onehot @ E (E the input embedding), so
    d score / d onehot[t, v] = E[v] . d score / d inputs_embeds[t].
    kind "reward": the head on the last token; kind "logprob":
    sum_t log_softmax(logits_{t-1}) . onehot_t (the relaxed targets carry
    gradient too).

    Returns:
      (scores [B], d sum(scores) / d onehot [B, T, V]) as float64 numpy arrays.
    """
    ref = copy.deepcopy(ckpt.torch_model).double()  # a copy: the fixture's module stays float32
    table = ref.backbone.get_input_embeddings().weight
    scores, grads = [], np.zeros(onehot.shape, dtype=np.float64)
    for b in range(onehot.shape[0]):
        real = np.flatnonzero(mask[b] > 0)
        x = torch.tensor(onehot[b, real][None], dtype=torch.float64, requires_grad=True)   # [1, T_b, V]
        h = ref.backbone(inputs_embeds=x @ table, attention_mask=torch.ones(1, len(real), dtype=torch.long),
                         position_ids=torch.arange(len(real))[None]).last_hidden_state
        if kind == "reward":
            score = ref.head(h[:, -1])[0, 0]
        else:
            logp = torch.log_softmax(ref.lm_head(h)[:, :-1], dim=-1)
            score = (logp * x[:, 1:]).sum()
        score.backward()
        scores.append(score.item())
        grads[b, real] = x.grad[0].numpy()
    return np.array(scores), grads
