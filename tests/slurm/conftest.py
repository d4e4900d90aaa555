"""A real single-node Slurm cluster for the whole test session (slurm/start.sh), stopped at the end
if this session started it."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _answering(env) -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], env=env, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0 and not shutil.which("slurmctld"):
        pytest.skip("the local Slurm cluster needs root (to install and start its daemons)")
    state = os.environ.get("TAYLORLAB_SLURM_DIR", "/tmp/taylorlab-slurm")
    conf = f"{state}/etc/slurm.conf"
    env = {**os.environ, "SLURM_CONF": conf}
    started = False
    if not (Path(conf).exists() and _answering(env)):
        # leftovers of a cluster whose daemons are gone (an earlier session): stop and start clean
        subprocess.run(["bash", str(ROOT / "slurm" / "stop.sh")], capture_output=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)
        out = subprocess.run(["bash", str(ROOT / "slurm" / "start.sh")], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        started = True
    os.environ["SLURM_CONF"] = conf
    yield conf
    if started:
        subprocess.run(["bash", str(ROOT / "slurm" / "stop.sh")], capture_output=True, timeout=120)
