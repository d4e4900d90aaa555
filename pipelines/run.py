"""The pipeline entry point: compose the config with Hydra and hand it to the engine.

    python pipelines/run.py                          # every stage, tiny model, launcher=local
    python pipelines/run.py dry_run=true             # the plan: what runs, what is skipped
    python pipelines/run.py -m experiment=demo      # the demo sweep (four pruning methods)
    python pipelines/run.py --help                   # every config group and key

It wires; it computes nothing. Nothing imports it.
"""

import sys
from pathlib import Path

import hydra

from taylorlab.cli import precheck, run_pipeline
from taylorlab.config import register_configs

CONF = str(Path(__file__).resolve().parent.parent / "conf")

register_configs()


@hydra.main(version_base="1.3", config_path=CONF, config_name="pipeline")
def main(cfg):
    return run_pipeline(cfg)


if __name__ == "__main__":
    sys.argv += precheck(CONF, "pipeline", sys.argv[1:])
    main()
