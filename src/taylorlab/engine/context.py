"""What a stage function is handed."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

from taylorlab.engine.fanout import fan_out
from taylorlab.errors import ArtifactError
from taylorlab.io import read_json


@dataclass
class StageContext:
    node: str  # e.g. "evaluate_pruned"
    stage: str  # e.g. "evaluate"
    cfg: Any  # this stage's config section (DictConfig)
    dir: Path  # the stage directory; write artifacts here (atomically)
    parents: Dict[str, Path]  # role -> parent stage directory
    tracker: Any  # taylorlab.tracking.Tracker
    log: logging.Logger
    progress: bool = True
    dist: Any = None  # taylorlab.training.distributed.DistInfo of this task (rank 0 of 1 by default)
    launcher: Dict[str, Any] = field(default_factory=dict)  # the pipeline's launcher section
    resources: Dict[str, Any] = field(default_factory=dict)  # this stage's resources

    def fan_out(self, name: str, fn: Callable, *arg_lists: Sequence) -> List[Any]:
        """``fn`` over the argument lists as sub-jobs of this stage, through the pipeline's launcher
        (in process / local processes / a Slurm array), each with this stage's resources; their
        submitit folders under ``<stage>/<name>/``."""
        return fan_out(self.dir / name, self.launcher or {"name": "local"}, self.resources, f"{self.node}-{name}",
                       fn, *arg_lists)

    def parent_manifest(self, role: str) -> Dict[str, Any]:
        if role not in self.parents:
            raise ArtifactError(f"stage {self.node} needs a '{role}' input but none is part of this run.")
        return read_json(self.parents[role] / "manifest.json")

    def artifact(self, role: str, name: str, required: bool = True) -> Path | None:
        """Path of artifact ``name`` of the parent bound to ``role``; checks that it exists."""
        manifest = self.parent_manifest(role)
        rel = manifest.get("artifacts", {}).get(name)
        if rel is None:
            if not required:
                return None
            raise ArtifactError(
                f"the {role} input ({self.parents[role].name}) has no '{name}' artifact; "
                f"it has {', '.join(manifest.get('artifacts', {})) or 'none'}."
            )
        path = self.parents[role] / rel
        if not path.exists():
            raise ArtifactError(f"artifact {path} listed in the manifest is missing; force the {role} stage to re-run.")
        return path

    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoints"
