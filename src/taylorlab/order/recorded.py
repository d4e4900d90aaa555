"""The recorded reference run, as one object with one reader: what every estimator, the truth,
curriculum search and memorization analysis take."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from safetensors.torch import load_file

from taylorlab.io import read_json
from taylorlab.models import load_model_artifact
from taylorlab.order.functional import AdamHP, FlatModel
from taylorlab.order.trajectory import Trajectory


@dataclass
class Record:
    """The reference run: the model as a flat function, its trajectory, the T training batches in
    their recorded order of ids, the validation batches and the record's metadata."""

    flat: FlatModel
    traj: Trajectory
    batches: torch.Tensor
    val: Optional[torch.Tensor] = None
    meta: Optional[Dict[str, Any]] = None

    def __post_init__(self):
        if self.traj.batches is None:  # the trajectory replays its unstored steps from these
            self.traj.batches = self.batches
        if self.traj.flat is None:
            self.traj.flat = self.flat

    @property
    def T(self) -> int:
        return self.traj.T

    @property
    def reference_loss(self) -> Optional[float]:
        """The reference run's final validation loss (from the record, else computed once)."""
        meta = self.meta if self.meta is not None else {}
        if "reference_validation_loss" not in meta and self.val is not None:
            meta["reference_validation_loss"] = self.flat.eval_loss(self.traj.final, self.val)
            self.meta = meta
        return meta.get("reference_validation_loss")

    @property
    def device(self) -> torch.device:
        return self.traj.device

    @classmethod
    def load(cls, paths: Mapping[str, Union[str, Path]], device) -> "Record":
        """The record stage's artifacts (``meta``, ``trajectory``, ``model``) read onto ``device``."""
        meta = read_json(paths["meta"])
        tensors = {k: v.to(device) for k, v in load_file(str(paths["trajectory"])).items()}
        model, _ = load_model_artifact(paths["model"])
        model = model.to(device=device, dtype=tensors["theta.0"].dtype)
        flat = FlatModel(model, micro_batch=meta.get("micro_batch", 0))  # the record's accumulation, for every stage
        hp = AdamHP(betas=tuple(meta["betas"]), eps=meta["eps"], weight_decay=meta["weight_decay"],
                    grad_clip=meta["grad_clip"])
        batches, val = tensors.pop("batches"), tensors.pop("validation")
        traj = Trajectory.from_tensors(tensors, meta["order"], meta["lrs"], hp, meta.get("checkpoint_every", 1), flat,
                                       batches)
        return cls(flat, traj, batches, val, meta)
