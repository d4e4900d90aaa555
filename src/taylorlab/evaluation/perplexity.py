from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from taylorlab.data.tokens import make_windows


@torch.no_grad()
def perplexity(model, tokens: torch.Tensor, seq_len: int, *, batch_size: int = 8, max_windows: Optional[int] = None,
               device: torch.device = torch.device("cpu"), progress: bool = False) -> Dict[str, float]:
    """exp(mean next-token NLL) over non-overlapping windows of ``seq_len`` tokens.

    Each window is scored on its own (the papers' protocol); ``seq_len`` is recorded with the result
    because it changes the number.
    """
    from tqdm.auto import tqdm

    windows = make_windows(tokens, seq_len, max_windows)
    model.eval()
    nll_sum, count = 0.0, 0
    for i in tqdm(range(0, windows.shape[0], batch_size), desc="evaluate", disable=not progress, leave=False):
        batch = windows[i : i + batch_size].to(device)
        logits = model(input_ids=batch).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        nll_sum += float(loss)
        count += batch[:, 1:].numel()
    nll = nll_sum / count
    return {"ppl": math.exp(nll) if nll < 700 else float("inf"), "nll": nll, "tokens": count,
            "windows": int(windows.shape[0]), "seq_len": seq_len}
