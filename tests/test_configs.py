"""Every config file composes; bad keys and values fail with one line that names them."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from taylorlab.config import register_configs
from taylorlab.config.schema import validate
from taylorlab.errors import ConfigError

from helpers import ROOT, run_cli

CONF = ROOT / "conf"
register_configs()


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="pipeline", overrides=overrides, return_hydra_config=False)


@pytest.mark.parametrize(
    "override",
    [f"model={m}" for m in _options("model")] + [f"launcher={m}" for m in _options("launcher")]
    + [f"data={m}" for m in _options("data")] + [f"experiment={m}" for m in _options("experiment")]
    + [f"debug={m}" for m in _options("debug")] + [f"prune={m}" for m in _options("prune")],
)
def test_every_config_file_composes_and_validates(override, tmp_path):
    cfg = _compose([override, f"out_dir={tmp_path}"])
    validate(cfg)
    OmegaConf.resolve(cfg)  # interpolations resolve
    assert cfg.model.name and cfg.launcher.name in ("inline", "local", "slurm")


def test_unknown_key_is_rejected_by_the_schema():
    with pytest.raises(Exception, match="lrr"):
        _compose(["train.lrr=1"])


def test_wrong_type_is_rejected_by_the_schema():
    with pytest.raises(Exception, match="fast"):
        _compose(["train.lr=fast"])


@pytest.mark.parametrize(
    "override, words",
    [
        ("prune.sparsity=1.5", "prune.sparsity"),
        ("prune.pattern=3:2", "prune.pattern"),
        ("prune.pattern=half", "prune.pattern"),
        ("prune.method=random", "prune.method"),
        ("train.order=sorted", "train.order"),
        ("launcher.name=k8s", "launcher.name"),
        ("record.skip_batches=-1", "record.skip_batches"),
        ("record.micro_batch=-1", "record.micro_batch=-1"),
        ("record.micro_batch=99", "at most record.batch_size"),
        ("prune.batch_size=0", "prune.batch_size"),
        ("prune.kernels=triton", "prune.kernels='triton' is not one of eager, liger"),
        ("calibrate.kernels=fast", "calibrate.kernels='fast' is not one of eager, liger"),
        ("inference.backends=[cslt]", "lacks dense"),
        ("inference.backends=[dense,csr]", "inference.backends='csr' is not one of dense, semi_structured, cslt"),
        ("inference.modes=[compiled]", "inference.modes='compiled'"),
        ("inference.decode_length=1", "inference.decode_length=1: at least 2"),
        ("inference.prompt_lengths=[]", "inference.prompt_lengths"),
        ("inference.device=gpu", "inference.device='gpu' is not a device"),
    ],
)
def test_bad_values_fail_validation(override, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        validate(_compose([override]))


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["prune.pattern=2:4", "prune.sparsity=0.7"], "fixes the sparsity at 0.5"),
        (["prune.pattern=1:4", "prune.sparsity=0.5"], "fixes the sparsity at 0.75"),
        (["prune=sparsegpt", "prune.pattern=4:8", "prune.options.blocksize=12"], "not a multiple of M=8"),
        (["prune.method=sparsegpt", "prune.pattern=4:8", "+prune.options.blocksize=12"], "not a multiple of M=8"),
        (["prune=gblm", "prune.method=wanda"], "prune.options.alpha does not apply to wanda"),
        (["+prune.options.alpha=2"], "prune.options.alpha does not apply to wanda"),
        (["prune=gblm", "prune.options.alpha=fast"], "prune.options.alpha='fast' is not a float"),
        (["prune=gblm", "prune.options.normalization=cube"], "prune.options.normalization='cube'"),
        (["prune.method=nosuch"], "prune.method='nosuch' is not one of magnitude, wanda, ria, sparsegpt, wanda"),
    ],
)
def test_cross_key_prune_checks(overrides, words):
    with pytest.raises(ConfigError, match=words):
        validate(_compose(overrides))


def test_an_nm_pattern_fixes_the_sparsity_and_leaving_it_unset_is_fine():
    from taylorlab.config.schema import effective_sparsity

    for overrides, expected in ((["prune.pattern=2:4"], 0.5), (["prune.pattern=1:4"], 0.75),
                                (["prune.pattern=4:8", "prune.sparsity=0.5"], 0.5), ([], 0.5),
                                (["prune.sparsity=0.7"], 0.7)):
        cfg = _compose(overrides)
        validate(cfg)
        assert effective_sparsity(cfg.prune) == expected


def test_every_member_of_a_sweep_is_checked_before_the_first_runs(tmp_path):
    proc = run_cli(["-m", "prune.sparsity=0.5,0.7", "prune.pattern=unstructured,2:4", "debug=fast"], tmp_path)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "prune.sparsity=0.7 prune.pattern=2:4" in lines[0]
    assert not any(p.name.startswith(("data-", "base_model-")) for p in Path(tmp_path).rglob("*"))


def test_gblm_without_gradients_is_a_config_error():
    with pytest.raises(ConfigError, match="calibrate.gradients"):
        validate(_compose(["prune.method=gblm", "calibrate.gradients=false"]))


@pytest.mark.parametrize("override", ["train.lrr=1", "train.lr=fast", "prune.sparsity=1.5", "model=nosuch",
                                      "stages=[nosuch]"])
def test_entry_point_prints_one_line_and_writes_nothing(override, tmp_path):
    proc = run_cli([override, "dry_run=true"], tmp_path)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:")
    assert "Traceback" not in proc.stderr
    assert not any(p.name.startswith(("data-", "train-")) for p in Path(tmp_path).rglob("*"))


def test_help_lists_groups_and_examples(tmp_path):
    proc = run_cli(["--help"], tmp_path)
    assert proc.returncode == 0
    for word in ("model:", "launcher:", "dry_run=true", "force=train", "taylorlab status"):
        assert word in proc.stdout, word


def test_the_tracker_redacts_secrets_but_no_setting_of_the_schema():
    """The W&B mirror drops keys that look like secrets; every key of the composed default config is a
    setting (tokenizer_vocab_size, inference.decode_length) and must reach W&B as it is."""
    from taylorlab.tracking.metrics import scrub

    cfg = OmegaConf.to_container(_compose([]), resolve=False)
    assert scrub(cfg) == cfg
    secrets = {"hf_token": 1, "HF_TOKEN": 1, "wandb_api_key": 1, "db_password": 1, "client-secret": 1, "apikey": 1}
    assert all(v == "<redacted>" for v in scrub(secrets).values())
    assert scrub({"decode_tokens": 4, "tokenizer_vocab_size": 512}) == {"decode_tokens": 4, "tokenizer_vocab_size": 512}
