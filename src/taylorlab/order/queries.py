"""The orders an order study asks about: seeded random permutations and the named curricula, and
the timer every cost in the tables comes from."""

from __future__ import annotations

import random
import time
from typing import Dict, List

import torch


def timed(fn):
    """(fn(), wall seconds), with the GPU synchronised on both sides when there is one."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def random_orders(T: int, n: int, seed: int) -> List[List[int]]:
    """``n`` seeded random permutations of range(T) (the held-out queries)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        o = list(range(T))
        rng.shuffle(o)
        out.append(o)
    return out


def heuristic_orders(batch_losses: List[float]) -> Dict[str, List[int]]:
    """The named curricula: reverse, and easy-to-hard / hard-to-easy by each batch's loss at the end
    of the reference run."""
    T = len(batch_losses)
    by_loss = sorted(range(T), key=lambda b: batch_losses[b])
    return {"reverse": list(range(T - 1, -1, -1)), "easy_to_hard": by_loss, "hard_to_easy": by_loss[::-1]}


def final_batch_losses(flat, traj, batches) -> List[float]:
    """Each training batch's loss at the end of the reference run (easy / hard for the curricula)."""
    return [float(flat.loss(traj.final, b).detach()) for b in batches]
