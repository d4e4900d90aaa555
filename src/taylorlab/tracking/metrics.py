"""Metrics go to metrics.jsonl first (one JSON object a line, ``split/name`` keys), then to W&B.

W&B is offline unless the user says otherwise (``WANDB_MODE`` in the environment wins over
``wandb.mode``); every W&B folder is kept inside the pipeline run directory so nothing piles up in
$HOME. One W&B run per stage, grouped by pipeline run, ``job_type`` = stage.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

log = logging.getLogger("taylorlab.tracking")

# a key is a secret when one of its words is one of these (hf_token, wandb_api_key, db_password), not when
# a word merely contains one (tokenizer_vocab_size, decode_tokens are settings and stay visible)
_SECRET_WORDS = {"token", "apikey", "password", "passwd", "secret", "credentials"}
_SECRET_PAIRS = ("api_key", "access_key", "private_key")


def looks_secret(key: Any) -> bool:
    k = str(key).lower()
    words = set(re.split(r"[^a-z0-9]+", k))
    return bool(words & _SECRET_WORDS) or any(p in k for p in _SECRET_PAIRS)


def configure_wandb_env(run_dir: Path, mode: str) -> str:
    """Point every W&B folder inside ``run_dir/wandb`` and settle the mode; returns the mode."""
    base = Path(run_dir) / "wandb"
    for var, sub in (
        ("WANDB_DIR", ""),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_ARTIFACT_DIR", "artifacts"),
    ):
        path = base / sub if sub else base
        path.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(path)  # always this run's tree (a previous run in this process set them too)
    mode = os.environ.get("WANDB_MODE") or mode
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    return mode


def scrub(obj: Any) -> Any:
    """Drop anything that looks like a secret from a config before it is logged anywhere."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if looks_secret(k) else scrub(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


class Tracker:
    def __init__(
        self,
        stage_dir: Path,
        *,
        run_dir: Path,
        run_name: str,
        node: str,
        job_type: str,
        config: Dict[str, Any],
        wandb_cfg: Optional[Dict[str, Any]] = None,
    ):
        self.path = Path(stage_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._wandb_run = None
        wandb_cfg = wandb_cfg or {"mode": "disabled"}
        mode = configure_wandb_env(run_dir, wandb_cfg.get("mode", "offline"))
        if mode != "disabled":
            import wandb

            self._wandb_run = wandb.init(
                project=wandb_cfg.get("project", "taylorlab"),
                entity=wandb_cfg.get("entity"),
                group=run_name,
                job_type=job_type,
                name=f"{run_name}/{node}",
                config=scrub(config),
                tags=list(wandb_cfg.get("tags") or []),
                dir=os.environ["WANDB_DIR"],
                mode=mode,
                reinit="create_new",
            )

    @property
    def wandb_run(self):
        return self._wandb_run

    def _write(self, record: Dict[str, Any]) -> None:
        self._fh.write(json.dumps({"time": time.time(), **record}, default=_jsonable) + "\n")
        self._fh.flush()

    def drop_steps_from(self, step: int) -> int:
        """Forget the local lines of steps ``>= step`` (a resumed stage logs them again: the steps
        between its last checkpoint and the interruption would otherwise appear twice). The file is
        rewritten atomically; returns how many lines were dropped."""
        self._fh.close()
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by the interruption
                dropped += 1
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] >= step:
                dropped += 1
            else:
                kept.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(tmp, self.path)
        self._fh = open(self.path, "a", encoding="utf-8")
        return dropped

    def log(self, metrics: Dict[str, Any], step: Optional[int] = None) -> None:
        self._write({**({"step": step} if step is not None else {}), **metrics})
        if self._wandb_run is not None:
            self._wandb_run.log(metrics, step=step)

    def summary(self, metrics: Dict[str, Any]) -> None:
        """Final numbers of the stage: a ``"summary": true`` line locally, the run summary in W&B."""
        self._write({"summary": True, **metrics})
        if self._wandb_run is not None:
            for k, v in metrics.items():
                self._wandb_run.summary[k] = v

    def table(self, key: str, columns: List[str], rows: Iterable[List[Any]]) -> None:
        rows = [list(r) for r in rows]
        self._write({key: {"columns": columns, "rows": rows}})
        if self._wandb_run is not None:
            import wandb

            self._wandb_run.log({key: wandb.Table(columns=columns, data=rows)})

    def image(self, key: str, path: Path) -> None:
        """A figure already written to ``path`` (PNG): recorded locally, logged as a W&B image."""
        self._write({key: {"image": str(path)}})
        if self._wandb_run is not None:
            import wandb

            self._wandb_run.log({key: wandb.Image(str(path))})

    def artifact(self, name: str, type: str, files: Dict[str, Path], uses: Iterable[str] = (),
                 metadata: Optional[Dict[str, Any]] = None) -> None:
        """Log this stage's output as a W&B artifact named after its stage directory.

        Folders (models) are added by reference (``file://``), so nothing large is copied; small
        files are added. Lineage: online, the parents' artifacts are declared with ``use_artifact``;
        offline, where W&B refuses ``use_artifact``, they are recorded in the metadata (``inputs``)."""
        self._write({"artifact": {"name": name, "type": type, "files": {k: str(v) for k, v in files.items()},
                                  "inputs": list(uses)}})
        if self._wandb_run is None:
            return
        import wandb

        art = wandb.Artifact(name, type=type, metadata={**(metadata or {}), "inputs": list(uses)})
        for key, path in files.items():
            path = Path(path)
            if path.is_dir():
                art.add_reference(path.resolve().as_uri(), name=key, checksum=False)
            else:
                art.add_file(str(path), name=key)
        if not self._wandb_run.offline:
            for u in uses:
                try:
                    self._wandb_run.use_artifact(f"{u}:latest")
                except Exception as exc:  # a parent logged with W&B disabled has no artifact
                    log.warning("W&B lineage: %s not found (%s)", u, exc)
        self._wandb_run.log_artifact(art)

    def finish(self, failed: bool = False) -> None:
        self._fh.close()
        if self._wandb_run is not None:
            self._wandb_run.finish(exit_code=1 if failed else 0)
            self._wandb_run = None


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def read_metrics(stage_dir: Path) -> List[Dict[str, Any]]:
    path = Path(stage_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill; earlier lines are intact
    return out
