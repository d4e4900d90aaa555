"""Command line: ``taylorlab status RUN_DIR``, ``taylorlab report RUN_DIR...``; and the shared body
of the pipeline entry scripts (``run_pipeline``), with one-line errors for what a user can cause.

The engine, the stages and the report are imported inside the commands that use them: they pull in
torch and transformers (seconds), which ``--help``, a config error or ``taylorlab status`` should not wait for."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

from hydra.experimental.callback import Callback

from taylorlab.errors import TaylorlabError

log = logging.getLogger("taylorlab")


def setup_logging() -> None:
    root = logging.getLogger("taylorlab")
    if not any(isinstance(h, logging.StreamHandler) for h in root.handlers) and not logging.getLogger().handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("[taylorlab] %(message)s"))
        root.addHandler(h)
    root.setLevel(logging.INFO)


def fail(message: str, code: int = 2) -> None:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(code)


# ------------------------------------------------------------------- config checks before Hydra runs


MAX_CHECKED_MEMBERS = 256  # past this many sweep members, each value is checked with the others' first


def _sweep_members(overrides: List[str], config_params: Optional[dict] = None) -> List[List[str]]:
    """The override lists of every member of a sweep (``a=1,2 b=x,y``: four), so each member's
    config is checked before the first one runs. ``config_params`` are sweeps a config file
    declares (``hydra.sweeper.params``); the command line wins for the same key. Past
    ``MAX_CHECKED_MEMBERS`` members each value is checked once, with the first value of the others."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    fixed: List[str] = []
    axes: Dict[str, List[str]] = {}
    for key, values in (config_params or {}).items():
        ov = parser.parse_overrides([f"{key}={values}"])[0]
        axes[key] = ([f"{key}={v}" for v in ov.sweep_string_iterator()] if ov.is_sweep_override()
                     else [f"{key}={values}"])
    for text, ov in zip(overrides, parser.parse_overrides(overrides)):
        key = ov.get_key_element()
        if ov.is_sweep_override():
            axes[key] = [f"{key}={v}" for v in ov.sweep_string_iterator()]
        else:
            axes.pop(key, None)
            fixed.append(text)
    lists = list(axes.values())
    total = 1
    for values in lists:
        total *= len(values)
    if total <= MAX_CHECKED_MEMBERS:
        return [fixed + list(combo) for combo in itertools.product(*lists)] or [fixed]
    members = []
    for i, values in enumerate(lists):
        for v in values:
            members.append(fixed + [v if j == i else other[0] for j, other in enumerate(lists)])
    return members


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _read_only_overrides(cfg, multirun: bool = False) -> List[str]:
    """Hydra writes its own folder (``.hydra/``) and a log under the run directory before the job
    starts. On a read-only outputs tree a dry run still works: Hydra is pointed at the existing
    folder and told to write nothing; anything else ends in one line."""
    run_dir = Path(str(cfg.out_dir)).expanduser() / str(cfg.run)
    existing = _nearest_existing(run_dir.absolute())
    if os.access(existing, os.W_OK):
        return []
    if multirun and cfg.dry_run:
        fail(f"{existing} is read-only, and a -m sweep writes its multirun.yaml there even for a dry run; dry-run "
             f"one member without -m, or set out_dir to a writable folder.")
    if not cfg.dry_run:
        fail(f"{existing} is read-only, so run {cfg.run} cannot write its stages there; set out_dir to a writable "
             f"folder (dry_run=true, `taylorlab status` and `taylorlab report --output ELSEWHERE` work on it as it is).")
    return [f"hydra.run.dir={existing}", f"hydra.sweep.dir={existing}", "hydra.sweep.subdir=.",
            "hydra.output_subdir=null", "hydra/job_logging=stdout", "hydra/hydra_logging=none"]


def precheck(config_dir: str, config_name: str, argv: List[str]) -> List[str]:
    """Compose the config the way Hydra will and check its values — for every member of a ``-m``
    sweep — so a bad key or value ends here, before anything runs, with one line that names it
    (and, in a sweep, the member) instead of Hydra's multi-line report. Returns overrides to add
    for Hydra itself (a read-only outputs tree)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from taylorlab.config import register_configs
    from taylorlab.config.schema import validate

    overrides = [a for a in argv if not a.startswith("-") and "=" in a and not a.startswith(("hydra.", "hydra/", "+hydra"))]
    if any(a in ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c") or a.startswith("--cfg") for a in argv):
        return []
    multirun = any(a in ("-m", "--multirun") for a in argv)
    register_configs()
    member: List[str] = []
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            members = _sweep_members(overrides)
            params = None
            if multirun:
                first = compose(config_name=config_name, overrides=members[0], return_hydra_config=True)
                params = OmegaConf.to_container(first.hydra.sweeper.params) if first.hydra.sweeper.get("params") else None
                members = _sweep_members(overrides, params)
            for member in members:
                cfg = compose(config_name=config_name, overrides=member)
                validate(cfg)
            return _read_only_overrides(cfg, multirun)
    except TaylorlabError as exc:
        swept = [m.replace("\\:", ":") for m in member if m not in overrides]
        where = f" (in the sweep member {' '.join(swept)})" if multirun and swept else ""
        fail(f"{exc}{where}")
    except (HydraException, OmegaConfBaseException) as exc:
        texts = [str(exc)] + ([str(exc.__cause__)] if exc.__cause__ is not None else [])
        lines = []
        for text in texts:
            for ln in text.splitlines():
                ln = ln.strip()
                if ln and ln not in lines and not ln.startswith(("full_key", "object_type", "reference_type", "To append")):
                    lines.append(ln)
        fail("invalid config: " + "; ".join(lines[:3]))


# ------------------------------------------------------------------------------ running a pipeline


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_pipeline(cfg) -> Optional[dict]:
    """Validate ``cfg``, plan and run the stage graph; print where the results are.

    In a ``-m`` sweep a failed member does not stop the sweep: its error line is printed, the
    failure is returned (``SweepSummary`` collects it) and the next member runs."""
    from taylorlab.config.schema import validate
    from taylorlab.engine.executors import execute
    from taylorlab.stages import GRAPH

    setup_logging()
    if os.environ.get("CI"):
        cfg.progress = False
    sweep = _in_sweep()
    try:
        validate(cfg)
        plan = execute(GRAPH, cfg)
    except KeyboardInterrupt:
        fail("interrupted: the running stages were stopped; run the same command again to resume "
             "(finished stages are skipped, interrupted ones continue from their checkpoints).", code=130)
    except Exception as exc:  # noqa: BLE001 - in a sweep every failure is reported and the sweep goes on
        if not sweep:
            if isinstance(exc, TaylorlabError):
                fail(str(exc))
            raise
        if not isinstance(exc, TaylorlabError):
            log.exception("sweep member failed with an unexpected error")
        message = " ".join(f"{type(exc).__name__}: {exc}".split()) if not isinstance(exc, TaylorlabError) \
            else " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        return {"status": "failed", "cause": message}
    ran = [s.node for s in plan.stages.values() if s.action == "run"]
    skipped = [s.node for s in plan.stages.values() if s.action == "skip"]
    if not cfg.dry_run:
        verb = "submitted" if cfg.launcher.name == "slurm" and not cfg.launcher.wait else "ran"
        print(f"[taylorlab] {plan.run_dir}: {verb} {len(ran)} stage(s) {', '.join(ran) or '-'}; "
              f"skipped {len(skipped)} done")
        if verb == "submitted":
            print(f"[taylorlab] follow it with: taylorlab status {plan.run_dir}")
    return {"status": "ok", "run_dir": str(plan.run_dir)}


class SweepSummary(Callback):
    """Hydra callback (conf/pipeline.yaml): after a ``-m`` sweep, one line per failed member (its
    overrides and cause: stage, log) and a non-zero exit when any member failed."""

    def __init__(self) -> None:
        self.members: List[tuple] = []

    def on_job_end(self, config, job_return, **kwargs) -> None:
        overrides = " ".join(job_return.overrides or []).replace("\\:", ":") or "(no overrides)"
        try:  # a member that raised (a bug, not a reported failure) re-raises here
            value = job_return.return_value
        except Exception as exc:  # noqa: BLE001 - reported in the summary with the rest
            self.members.append((overrides, f"{type(exc).__name__}: {exc}"))
            return
        failed = isinstance(value, dict) and value.get("status") == "failed"
        self.members.append((overrides, value.get("cause") if failed else None))

    def on_multirun_end(self, config, **kwargs) -> None:
        failed = [(o, c) for o, c in self.members if c]
        if not self.members:
            return
        print(f"[taylorlab] sweep: {len(self.members) - len(failed)} of {len(self.members)} member(s) succeeded")
        for overrides, cause in failed:
            print(f"error: sweep member {overrides} failed: {' '.join(str(cause).split())}", file=sys.stderr)
        if failed:
            sys.exit(1)


# ------------------------------------------------------------------------------------- subcommands


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_STAGE_DIR = re.compile(r"^[a-z_]+-[0-9a-f]{12}$")


def one_line(text: str) -> str:
    """A cause as one readable line: terminal colour codes removed, whitespace collapsed."""
    return " ".join(_ANSI.sub("", str(text)).split())


def _run_dir(path: str) -> Path:
    """``path`` as a run directory (outputs/<run>), or one error line saying what it is instead."""
    rd = Path(path)
    if not rd.is_dir():
        fail(f"{rd} is not a run directory (expected outputs/<run>).")
    if any(p.is_dir() and _STAGE_DIR.match(p.name) for p in rd.iterdir()):
        return rd
    if _STAGE_DIR.match(rd.name) and (rd / "config.yaml").exists():
        fail(f"{rd} is a stage directory; give its run directory: {rd.parent}")
    fail(f"{rd} holds no stage directories (expected outputs/<run>, the folder a pipeline run writes).")
    return rd


def cmd_status(args) -> int:
    from taylorlab.report import stage_status

    for rd in [_run_dir(p) for p in args.run_dirs]:
        print(f"{rd}:")
        for s in stage_status(rd):
            print(f"  {s['node']:18s} {s['hash']:12s} {s['state']:24s} {one_line(s['detail'])}")
            if s["state"] == "failed":
                print(f"  {'':18s} log: {s['log']}")
    return 0


def cmd_report(args) -> int:
    from taylorlab.report import collect_results, format_table, plain_summary, write_html

    dirs = [_run_dir(p) for p in args.run_dirs]
    print(format_table(collect_results(dirs)))
    print("\n" + plain_summary(dirs))
    out = Path(args.output) if args.output else dirs[0] / "report" / "index.html"
    try:
        write_html(dirs, out, title=args.title)
    except OSError as exc:
        fail(f"cannot write {out} ({exc.strerror or exc}); write the page elsewhere with --output DIR/index.html.")
    print(f"\npage: {out.resolve()}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="taylorlab",
        description="Inspect taylorlab run directories. Pipelines themselves run with "
                    "`python pipelines/run.py [key=value ...]` (Hydra; add --help there for every option).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("status", help="state of every stage of run directories (done/failed/submitted/...)")
    s.add_argument("run_dirs", nargs="+", help="outputs/<run> folders")
    s.set_defaults(func=cmd_status)
    r = sub.add_parser("report", help="perplexity table and an HTML page over run directories or a sweep")
    r.add_argument("run_dirs", nargs="+", help="outputs/<run> folders")
    r.add_argument("-o", "--output", help="HTML file to write (default: <first run dir>/report/index.html)")
    r.add_argument("--title", default="taylorlab results")
    r.set_defaults(func=cmd_report)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except TaylorlabError as exc:
        fail(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
