"""Command line: ``taylorlab status RUN_DIR``, ``taylorlab report RUN_DIR...``; and the shared body
of the pipeline entry scripts (``run_pipeline``), with one-line errors for what a user can cause."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

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


def _first_of_sweeps(overrides: List[str]) -> List[str]:
    """Sweep overrides (``a=1,2``) replaced by their first value, so one composition checks them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out = []
    for text, ov in zip(overrides, parser.parse_overrides(overrides)):
        if ov.is_sweep_override():
            first = next(iter(ov.sweep_string_iterator()))
            out.append(f"{ov.get_key_element()}={first}")
        else:
            out.append(text)
    return out


def precheck(config_dir: str, config_name: str, argv: List[str]) -> None:
    """Compose the config the way Hydra will and check its values; a bad key or value ends here
    with one line that names it, instead of Hydra's multi-line report."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from taylorlab.config import register_configs
    from taylorlab.config.schema import validate

    overrides = [a for a in argv if not a.startswith("-") and "=" in a and not a.startswith(("hydra.", "hydra/", "+hydra"))]
    if any(a in ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c") or a.startswith("--cfg") for a in argv):
        return
    register_configs()
    try:
        overrides = _first_of_sweeps(overrides)
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
        validate(cfg)
    except TaylorlabError as exc:
        fail(str(exc))
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


def run_pipeline(cfg) -> Optional[str]:
    """Validate ``cfg``, plan and run the stage graph; print where the results are."""
    from taylorlab.config.schema import validate
    from taylorlab.engine.runner import execute
    from taylorlab.stages import GRAPH

    setup_logging()
    if os.environ.get("CI"):
        cfg.progress = False
    try:
        validate(cfg)
        plan = execute(GRAPH, cfg)
    except TaylorlabError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted: the running stages were stopped; run the same command again to resume "
             "(finished stages are skipped, interrupted ones continue from their checkpoints).", code=130)
    ran = [s.node for s in plan.stages.values() if s.action == "run"]
    skipped = [s.node for s in plan.stages.values() if s.action == "skip"]
    if not cfg.dry_run:
        verb = "submitted" if cfg.launcher.name == "slurm" and not cfg.launcher.wait else "ran"
        print(f"[taylorlab] {plan.run_dir}: {verb} {len(ran)} stage(s) {', '.join(ran) or '-'}; "
              f"skipped {len(skipped)} done")
        if verb == "submitted":
            print(f"[taylorlab] follow it with: taylorlab status {plan.run_dir}")
    return str(plan.run_dir)


# ------------------------------------------------------------------------------------- subcommands


def cmd_status(args) -> int:
    from taylorlab.report import stage_status

    for rd in args.run_dirs:
        rd = Path(rd)
        if not rd.is_dir():
            fail(f"{rd} is not a run directory (expected outputs/<run>).")
        print(f"{rd}:")
        for s in stage_status(rd):
            print(f"  {s['node']:18s} {s['hash']:12s} {s['state']:24s} {s['detail']}")
            if s["state"] == "failed":
                print(f"  {'':18s} log: {s['log']}")
    return 0


def cmd_report(args) -> int:
    from taylorlab.report import collect_results, format_table, write_html

    dirs = [Path(d) for d in args.run_dirs]
    for d in dirs:
        if not d.is_dir():
            fail(f"{d} is not a run directory (expected outputs/<run>).")
    print(format_table(collect_results(dirs)))
    out = Path(args.output) if args.output else dirs[0] / "report" / "index.html"
    write_html(dirs, out, title=args.title)
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
