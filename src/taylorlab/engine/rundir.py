"""The owner of a run directory and its stage directories: names, markers, manifest, state and
failure cause. The runner, the executors, ``taylorlab status`` and the report all read and write a
stage directory through ``StageDir``, so "done" means one thing everywhere: a ``DONE`` marker that
holds the stage's hash beside a readable manifest.

    outputs/<run>/<node>-<hash>/  config.yaml provenance.json manifest.json stage.log metrics.jsonl
                                  artifacts...  (checkpoints/ while running)  DONE | FAILED
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from taylorlab.io import atomic_write_json

DONE = "DONE"
FAILED = "FAILED"
MANIFEST = "manifest.json"
SUBMISSION = "submission.json"
CHECKPOINTS = "checkpoints"


def _read(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class StageDir:
    path: Path

    @classmethod
    def of(cls, run_dir: Path, node: str, stage_hash: str) -> "StageDir":
        return cls(Path(run_dir) / f"{node}-{stage_hash}")

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def node(self) -> str:
        return self.path.name.rpartition("-")[0]

    @property
    def hash(self) -> str:
        return self.path.name.rpartition("-")[2]

    # ---------------------------------------------------------------- reading
    def manifest(self) -> Optional[Dict[str, Any]]:
        return _read(self.path / MANIFEST)

    def done_marker(self) -> Optional[Dict[str, Any]]:
        return _read(self.path / DONE)

    def is_done(self, expected_hash: Optional[str] = None) -> bool:
        """Finished: a DONE marker (with ``expected_hash`` when given) and a readable manifest."""
        marker = self.done_marker()
        if marker is None or self.manifest() is None:
            return False
        return expected_hash is None or marker.get("hash") == expected_hash

    def failed(self) -> bool:
        return (self.path / FAILED).exists()

    def failure_cause(self) -> str:
        data = _read(self.path / FAILED) or {}
        return data.get("cause") or "no cause recorded (the process was killed?)"

    def submission(self) -> Optional[Dict[str, Any]]:
        return _read(self.path / SUBMISSION)

    def has_checkpoints(self) -> bool:
        return (self.path / CHECKPOINTS).exists()

    def stage(self) -> Optional[str]:
        """The stage kind (``evaluate``, ``estimate``, ...) from the manifest of a finished stage."""
        return (self.manifest() or {}).get("stage")

    def artifact(self, name: str) -> Optional[Path]:
        """A finished stage's artifact by its manifest name (None if it has none or it is missing)."""
        rel = ((self.manifest() or {}).get("artifacts") or {}).get(name)
        path = self.path / rel if rel else None
        return path if path is not None and path.exists() else None

    def state(self) -> str:
        """done | corrupt | failed | submitted | interrupted (resumable) | incomplete."""
        if (self.path / DONE).exists():
            return "done" if self.is_done() else "corrupt"
        if self.failed():
            return "failed"
        if self.submission() is not None:
            return "submitted"
        if self.has_checkpoints():
            return "interrupted (resumable)"
        return "incomplete"

    # ---------------------------------------------------------------- writing
    def clear_markers(self) -> None:
        for marker in (DONE, FAILED):
            (self.path / marker).unlink(missing_ok=True)

    def mark_done(self, stage_hash: str, manifest: Dict[str, Any]) -> None:
        """The manifest, then the DONE marker, each written atomically: DONE last means complete."""
        atomic_write_json(self.path / MANIFEST, manifest)
        atomic_write_json(self.path / DONE, {"hash": stage_hash, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def mark_failed(self, cause: str, stage_hash: str) -> None:
        atomic_write_json(self.path / FAILED, {"cause": cause, "hash": stage_hash})

    def record_submission(self, info: Dict[str, Any]) -> None:
        atomic_write_json(self.path / SUBMISSION, info)


def stage_dirs(run_dir: Path) -> List[StageDir]:
    """Every stage directory of a run (``<node>-<hash>``; Hydra's and cache folders start with '.')."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return [StageDir(p) for p in sorted(run_dir.iterdir())
            if p.is_dir() and "-" in p.name and not p.name.startswith(".")]


def finished(run_dirs, stage: Optional[str] = None) -> Iterator[StageDir]:
    """The finished stage directories of ``run_dirs`` (of one stage kind, by their manifests)."""
    for rd in run_dirs:
        for sd in stage_dirs(Path(rd)):
            if sd.is_done() and (stage is None or sd.stage() == stage):
                yield sd
