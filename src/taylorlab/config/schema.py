"""Typed config schemas, one per stage, registered in Hydra's ConfigStore.

The primary config (conf/pipeline.yaml) lists ``pipeline_schema`` first in its defaults, so Hydra
rejects an unknown key (``train.lrr=1``) or a mistyped value (``train.lr=fast``) at composition time
and names the key. Value ranges that a type cannot express are checked by ``validate_*`` before any
stage runs.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ReadonlyConfigError

from taylorlab.data import userfiles
from taylorlab.errors import ConfigError
from taylorlab.order import registry as order_registry
from taylorlab.pruning import Profile, check_method, check_walk, registry as pruning_registry
from taylorlab.pruning.kernels import check_kernels
from taylorlab.pruning.masks import parse_pattern, pattern_sparsity


@dataclass
class Resources:
    """What a stage asks its executor for (used by the local budget and by Slurm)."""

    cpus: int = 1
    gpus: int = 0
    mem_gb: float = 4.0
    timeout_min: int = 60
    nodes: int = 1
    tasks_per_node: int = 1


@dataclass
class DataConfig:
    seed: int = 0
    max_train_docs: Optional[int] = None  # cap on Wikipedia leads used for training (None: all)
    validation_docs: int = 300
    calibration_docs: int = 1000
    max_test_articles: Optional[int] = None
    min_doc_chars: int = 80
    tokenizer_vocab_size: int = 4096
    # domains of the training text, interleaved in blocks of block_chars characters (order matters)
    domains: List[str] = field(default_factory=lambda: ["wiki", "shakespeare", "austen"])
    block_chars: int = 2000
    # your own text instead of the embedded corpus: plain text (a document per paragraph) or JSON-lines
    # with a "text" field; test and validation split off by holdout (taylorlab.data.userfiles)
    files: List[str] = field(default_factory=list)
    holdout: float = 0.1
    files_digest: str = ""  # filled in by the config check from the files' contents (the cache key)
    resources: Resources = field(default_factory=Resources)


@dataclass
class ModelConfig:
    name: str = "tiny"
    source: str = "scratch"  # scratch | pretrained | gguf
    name_or_path: Optional[str] = None  # hub id or local folder, for source=pretrained
    local_files_only: bool = True  # never download unless the user says so
    gguf_package: Optional[str] = None  # Python package that ships the GGUF file (source=gguf)
    gguf_file: Optional[str] = None  # file name inside that package, or an absolute path
    dtype: str = "float32"  # dtype the model artifact is saved in
    trust_remote_code: bool = False
    # LlamaConfig for source=scratch
    hidden_size: int = 128
    intermediate_size: int = 352
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    init_seed: int = 0
    resources: Resources = field(default_factory=Resources)


@dataclass
class TrainConfig:
    seq_len: int = 128
    batch_size: int = 8
    max_batches: Optional[int] = None  # T: number of batches (steps) of the one epoch (None: all)
    order: str = "shuffled"  # identity | shuffled | reverse
    order_seed: int = 0
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    schedule: str = "cosine"  # cosine | constant
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: Optional[float] = 1.0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "float32"
    resources: Resources = field(default_factory=Resources)


@dataclass
class EvaluateConfig:
    split: str = "test"
    seq_len: int = 256
    batch_size: int = 8
    max_windows: Optional[int] = None
    device: str = "auto"
    dtype: str = "float32"
    # lm-evaluation-harness tasks (extra 'eval'): taylorlab_cloze is built from the test split, offline
    zero_shot_tasks: List[str] = field(default_factory=list)
    zero_shot_items: int = 200  # items of taylorlab_cloze
    zero_shot_limit: Optional[int] = None  # lm-eval's limit per task (None: all)
    resources: Resources = field(default_factory=Resources)


@dataclass
class CalibrateConfig:
    num_samples: int = 128
    seq_len: int = 2048  # capped by the model's context (never derived from it uncapped)
    seed: int = 0
    gradients: bool = True  # per-sequence gradient norms for GBLM
    grad_norm: str = "l2"  # l2 | l1
    batch_size: int = 4  # sequences per forward/backward pass
    # eager | liger: Liger-Kernel's fused RMSNorm, SwiGLU and rotary kernels in the gradient pass (CUDA,
    # Llama-family models; taylorlab.pruning.kernels)
    kernels: str = "eager"
    device: str = "auto"
    dtype: str = "float32"  # compute dtype of the model during the gradient pass
    resources: Resources = field(default_factory=Resources)


@dataclass
class PruneConfig:
    method: str = MISSING  # a registered method (taylorlab.pruning.registry), set by conf/prune/<method>.yaml
    # unstructured: the fraction of each layer's weights removed (unset: 0.5). An N:M pattern fixes it
    # at (M-N)/M; setting another value with one is an error.
    sparsity: Optional[float] = None
    pattern: str = "unstructured"  # unstructured | N:M (2:4, 4:8, ...)
    options: Dict[str, Any] = field(default_factory=dict)  # the method's own, checked against its dataclass
    profile: str = "uniform"  # uniform | owl: the spread of the sparsity over the blocks (any method)
    owl_m: float = 5.0  # owl: a score is an outlier above owl_m x the block's mean score
    owl_lambda: float = 0.08  # owl: the block sparsities span 2 x owl_lambda around the mean, prune.sparsity
    offload: bool = False  # keep the model on CPU, one decoder block on the device
    # block: each block's linears scored from the block as it stands (the reference codes); sequential: one
    # pass per block, each linear pruned once every calibration call reached it (later linears see it pruned)
    walk: str = "block"
    kernels: str = "eager"  # eager | liger: fused kernels in the calibration passes (as calibrate.kernels)
    save_compact: bool = True  # also model.compact.safetensors: kept values + a bitmask (taylorlab.pruning.compact)
    batch_size: int = 8  # calibration windows per block forward
    device: str = "auto"
    dtype: str = "float32"
    resources: Resources = field(default_factory=Resources)


@dataclass
class RecordConfig:
    """The reference run of the order-effect experiments (every step kept; small models)."""

    seq_len: int = 32
    batch_size: int = 4
    num_batches: int = 16  # T
    skip_batches: int = 0  # start after this many batches of the training split (continued training from a
    # checkpoint that saw them: model.source=pretrained, model.name_or_path=<its save_pretrained folder>)
    lr: float = 1e-3
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: Optional[float] = None
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    validation_batches: int = 8
    # auto: float32 on a GPU, float64 on the CPU. float64 is not float64 throughout: transformers
    # computes RMSNorm's variance, the eager softmax and the rotary embeddings in float32 whatever
    # the weights' dtype, so a float64 record is ~16x float32's precision there, not 2^29 x
    dtype: str = "auto"
    # store the state every k steps (the steps between are replayed exactly); 0: every step if the
    # states fit a quarter of the free GPU memory, else the smallest k that does (taylorlab.order.memory)
    checkpoint_every: int = 0
    # sequences per forward/backward pass, the batch's gradient accumulated over them (0: the whole
    # batch in one pass): how a step of 16k tokens fits one GPU; every later order stage uses the same
    micro_batch: int = 0
    device: str = "auto"
    resources: Resources = field(default_factory=Resources)


@dataclass
class EstimateConfig:
    # registered estimators (taylorlab.order.registry); each one's options under options.<name>
    estimators: List[str] = field(default_factory=lambda: list(order_registry.names()))  # all registered
    # every registered estimator's options, defaults filled in: estimate.options.fut-carry.curvature=secant
    options: Dict[str, Dict[str, Any]] = field(default_factory=lambda: {
        n: dataclasses.asdict(order_registry.get(n).make_options()) for n in order_registry.names()})
    num_orders: int = 16  # K held-out random orders
    seed: int = 1
    heuristics: List[str] = field(default_factory=lambda: ["reverse", "easy_to_hard", "hard_to_easy"])
    orders: List[List[int]] = field(default_factory=list)  # explicit queries
    retrain_batched: Optional[bool] = None  # None: batched (vmap) on a GPU, one at a time on the CPU (faster there)
    retrain_jobs: int = 1  # >1: retraining fanned out as sub-jobs through the pipeline's launcher (large models)
    # >1: the per-order estimators (none, fut, fut2, fut-carry) answer chunks of the orders in that many
    # sub-jobs (one GPU each with launcher=local and resources.gpus=1; a Slurm array on a cluster)
    estimate_jobs: int = 1
    retrain_chunk: Optional[int] = None  # orders trained together at a time (memory), all when null
    retrain_compile: bool = False  # batched retraining through torch.compile (GPU: faster, a one-off compilation)
    sensitivity: List[float] = field(default_factory=list)  # relative nudges of theta_0: the truth retrained from each
    save_params: bool = False  # also write params.safetensors: every query's estimated (and retrained) final weights
    device: str = "auto"
    resources: Resources = field(default_factory=Resources)


@dataclass
class MemorizeConfig:
    """Memorization by position over a grid of (batch, position) cells of the recorded run."""

    estimator: str = MISSING  # any registered order estimator that gives parameters (conf/pipeline.yaml)
    options: Dict[str, Any] = field(default_factory=dict)  # that estimator's options
    batches: List[int] = field(default_factory=list)  # batch ids i; [] = num_batches spread over the run
    num_batches: int = 3
    num_positions: int = 4  # positions j, spread from the first step to the last
    with_retraining: bool = True  # the true M (one retraining per cell) and the error against it
    device: str = "auto"
    resources: Resources = field(default_factory=Resources)


@dataclass
class CurriculumConfig:
    """Candidate curricula ranked by an estimator; the best few verified by real retraining."""

    estimator: str = MISSING  # a registered order estimator (conf/pipeline.yaml)
    options: Dict[str, Any] = field(default_factory=dict)  # that estimator's options
    proposers: List[str] = field(default_factory=list)  # estimators whose proposed order joins the candidates
    num_random: int = 8  # random orders among the candidates
    seed: int = 2
    heuristics: List[str] = field(default_factory=lambda: ["reverse", "easy_to_hard", "hard_to_easy"])
    genetic_generations: int = 3  # the paper's genetic search with the estimator as fitness; 0 = off
    genetic_population: int = 12
    genetic_keep: int = 2  # its best orders added to the candidates
    genetic_fitness: str = "estimator"  # estimator | retrain (the truth as fitness: batched real retraining)
    verify_top: int = 3  # candidates retrained (besides the reference order)
    screen: int = 0  # random orders scored by the estimator in the same call (e.g. 10000 with estimator=surrogate)
    screen_keep: int = 3  # ... of which the best join the candidates
    device: str = "auto"
    resources: Resources = field(default_factory=Resources)


@dataclass
class InferenceConfig:
    """The inference stage: the dense and the pruned model, timed where they would be served."""

    device: str = "auto"
    dtype: str = "auto"  # bfloat16 on a GPU, float32 on the CPU
    # dense | semi_structured (torch.sparse.to_sparse_semi_structured) | cslt (direct cuSPARSELt call);
    # the 2:4 backends run on a CUDA GPU of compute capability >= 8.0 and are reported skipped elsewhere
    backends: List[str] = field(default_factory=lambda: ["dense", "semi_structured", "cslt"])
    modes: List[str] = field(default_factory=lambda: ["eager", "graph"])  # graph: CUDA graphs (GPU only)
    prompt_lengths: List[int] = field(default_factory=lambda: [128, 2048, 8192])  # capped by the context
    prefill_batch: int = 1
    decode_batches: List[int] = field(default_factory=lambda: [1, 16])
    decode_prompt: int = 128  # prompt tokens before decoding
    # new tokens per decode measurement (eager: generate() of n against 1 new token); not "…tokens":
    # the W&B mirror redacts keys that look like secrets
    decode_length: int = 32
    check_length: int = 128  # tokens of the prompts whose logits each backend must reproduce
    min_run_time: float = 0.5  # seconds of repeated calls per measurement (torch.utils.benchmark)
    resources: Resources = field(default_factory=Resources)


@dataclass
class ReportConfig:
    title: str = "taylorlab run"
    resources: Resources = field(default_factory=Resources)


@dataclass
class LauncherConfig:
    name: str = "local"  # inline | local | slurm
    max_parallel: int = 2  # local: stages running at once (within the CPU budget below)
    cpu_budget: int = 2  # local: sum of resources.cpus of the stages running at once
    poll_interval_s: float = 0.5
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    gres_name: str = "gpu"
    additional_parameters: Dict[str, Any] = field(default_factory=dict)
    wait: bool = False  # slurm: block until the graph finishes (tests, small graphs)


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled (WANDB_MODE in the environment wins)
    project: str = "taylorlab"
    entity: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class PipelineConfig:
    run: str = "default"  # the pipeline run: outputs/<run>/
    out_dir: str = "outputs"
    stages: List[str] = field(default_factory=list)  # graph nodes to run (their parents come along)
    force: Optional[str] = None  # node(s) to re-run with their dependents: "train" or "train,prune"
    dry_run: bool = False
    progress: bool = True
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    estimate: EstimateConfig = field(default_factory=EstimateConfig)
    memorize: MemorizeConfig = field(default_factory=MemorizeConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="pipeline_schema", node=PipelineConfig)
    # the groups' files are typed through pipeline_schema's nodes; no schema is stored inside a group,
    # so `--help` lists only real choices


# ---------------------------------------------------------------- value checks (one sentence each)

def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}.")


def _positive(key: str, value: float | int | None) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{key}={value} must be positive.")


DEVICE_STAGES = ("train", "evaluate", "calibrate", "prune", "inference", "record", "estimate", "memorize", "curriculum")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")


def validate_device(key: str, value: Any) -> None:
    """One rule for every device key: auto, cpu, cuda or cuda:N (N is checked against the GPUs of
    the machine that runs the stage, when it starts)."""
    if not _DEVICE.match(str(value)):
        raise ConfigError(f"{key}={value!r} is not a device; use auto, cpu, cuda or cuda:N (e.g. cuda:0).")


def validate_run_name(name: Any) -> None:
    """A run is a name under out_dir, never a path: no separators, no '.'/'..', not absolute, so
    nothing a run writes (stage directories, Hydra's .hydra folders) can land outside out_dir."""
    text = str(name)
    if not text or text in (".", "..") or "/" in text or "\\" in text or text.startswith("~") or "\0" in text:
        raise ConfigError(f"run={text!r} is not a plain name: a run is a folder name under out_dir, without '/', "
                          f"'..' or a leading '~' (e.g. run=my-study); set out_dir to write elsewhere.")


def validate(cfg: Any) -> None:
    """Range and choice checks the types cannot express. Raises ConfigError."""
    validate_run_name(cfg.run)
    _choice("launcher.name", cfg.launcher.name, ("inline", "local", "slurm"))
    _choice("wandb.mode", cfg.wandb.mode, ("offline", "online", "disabled"))
    _choice("model.source", cfg.model.source, ("scratch", "pretrained", "gguf"))
    _choice("model.dtype", cfg.model.dtype, ("float32", "bfloat16", "float16"))
    if cfg.model.source == "pretrained" and not cfg.model.name_or_path:
        raise ConfigError("model.source=pretrained needs model.name_or_path (a hub id or a local folder).")
    if cfg.model.source == "gguf" and not cfg.model.gguf_file:
        raise ConfigError("model.source=gguf needs model.gguf_file.")
    t = cfg.train
    _choice("train.order", t.order, ("identity", "shuffled", "reverse"))
    _choice("train.schedule", t.schedule, ("cosine", "constant"))
    for key in ("seq_len", "batch_size", "lr", "checkpoint_every"):
        _positive(f"train.{key}", t[key])
    _positive("train.max_batches", t.max_batches)
    for stage in DEVICE_STAGES:
        validate_device(f"{stage}.device", cfg[stage].device)
    for stage in ("train", "evaluate", "calibrate", "prune"):
        # float64: exact comparisons (e.g. data-parallel against one process) and small studies
        _choice(f"{stage}.dtype", cfg[stage].dtype, ("float32", "float64", "bfloat16", "float16"))
    _positive("evaluate.batch_size", cfg.evaluate.batch_size)
    _positive("evaluate.seq_len", cfg.evaluate.seq_len)
    _positive("evaluate.max_windows", cfg.evaluate.max_windows)
    c = cfg.calibrate
    _positive("calibrate.num_samples", c.num_samples)
    _positive("calibrate.seq_len", c.seq_len)
    _positive("calibrate.batch_size", c.batch_size)
    _choice("calibrate.grad_norm", c.grad_norm, ("l2", "l1"))
    check_kernels(c.kernels, "calibrate.kernels")
    validate_prune(cfg.prune, cfg.calibrate)
    validate_inference(cfg.inference)
    validate_data_files(cfg)
    for d in cfg.data.domains:
        _choice("data.domains", d, ("wiki", "shakespeare", "austen"))
    if not cfg.data.domains:
        raise ConfigError("data.domains is empty: name at least one of wiki, shakespeare, austen.")
    _positive("data.block_chars", cfg.data.block_chars)
    r = cfg.record
    _choice("record.schedule", r.schedule, ("cosine", "constant"))
    _choice("record.dtype", r.dtype, ("auto", "float32", "float64"))
    for key in ("seq_len", "batch_size", "num_batches", "lr", "validation_batches"):
        _positive(f"record.{key}", r[key])
    if r.checkpoint_every < 0:
        raise ConfigError(f"record.checkpoint_every={r.checkpoint_every}: use 0 (planned from free memory) or a "
                          "positive number of steps.")
    if r.micro_batch < 0 or r.micro_batch > r.batch_size:
        raise ConfigError(f"record.micro_batch={r.micro_batch}: use 0 (the whole batch per pass) or the number of "
                          f"sequences per pass (at most record.batch_size={r.batch_size}).")
    if r.skip_batches < 0:
        raise ConfigError(f"record.skip_batches={r.skip_batches} must be 0 or more (batches of the training split "
                          "to pass over before the recorded T).")
    e = cfg.estimate
    validate_estimators(e, cfg.memorize, cfg.curriculum)
    _positive("estimate.retrain_jobs", e.retrain_jobs)
    _positive("estimate.estimate_jobs", e.estimate_jobs)
    for key in ("retrain_jobs", "estimate_jobs"):
        if e[key] > 1 and str(e.device).startswith("cuda") and int(e.resources.gpus) < 1:
            raise ConfigError(f"estimate.{key}={e[key]} on {e.device}: each sub-job gets the stage's resources; "
                              "set estimate.resources.gpus=1.")
    bad = [x for x in e.sensitivity if not 0 < x < 1]
    if bad:
        raise ConfigError(f"estimate.sensitivity holds relative nudges of the initial weights, each in (0, 1); got {bad}.")
    for name in e.heuristics:
        _choice("estimate.heuristics", name, ("reverse", "easy_to_hard", "hard_to_easy"))
    mz, cu = cfg.memorize, cfg.curriculum
    _choice("curriculum.genetic_fitness", cu.genetic_fitness, ("estimator", "retrain"))
    for name in cu.heuristics:
        _choice("curriculum.heuristics", name, ("reverse", "easy_to_hard", "hard_to_easy"))
    out_of_range = [i for i in mz.batches if not 0 <= i < cfg.record.num_batches]
    if out_of_range:
        raise ConfigError(f"memorize.batches has ids {out_of_range} outside 0..{cfg.record.num_batches - 1} "
                          f"(record.num_batches={cfg.record.num_batches}).")
    _positive("memorize.num_batches", mz.num_batches)
    _positive("memorize.num_positions", mz.num_positions)
    _positive("curriculum.verify_top", cu.verify_top)
    for key in ("num_random", "genetic_generations", "genetic_keep", "screen", "screen_keep"):
        if cu[key] < 0:
            raise ConfigError(f"curriculum.{key}={cu[key]} must be 0 or more.")
    if cu.genetic_generations and cu.genetic_population < 4:
        raise ConfigError(f"curriculum.genetic_population={cu.genetic_population}: the genetic search needs at least 4.")
    for i, order in enumerate(e.orders):  # explicit queries: permutations of the recorded T batches
        T = cfg.record.num_batches
        if sorted(int(x) for x in order) != list(range(T)):
            raise ConfigError(f"estimate.orders[{i}]={list(order)} is not a permutation of the record's "
                              f"{T} batches (0..{T - 1}, record.num_batches={T}).")
    if e.num_orders < 2 and not e.orders:
        raise ConfigError(f"estimate.num_orders={e.num_orders}: at least 2 orders are needed for a rank correlation.")


def validate_inference(i: Any) -> None:
    from taylorlab.evaluation.inference import BACKENDS, MODES  # torch only: cheap next to the schema's own

    for b in i.backends:
        _choice("inference.backends", b, BACKENDS)
    for m in i.modes:
        _choice("inference.modes", m, MODES)
    if "dense" not in i.backends:
        raise ConfigError(f"inference.backends={list(i.backends)} lacks dense: the pruned model's dense logits are "
                          "what every other backend is checked against.")
    if not i.modes:
        raise ConfigError("inference.modes is empty: name eager, graph or both.")
    _choice("inference.dtype", i.dtype, ("auto", "float32", "bfloat16", "float16"))
    for key in ("prefill_batch", "decode_prompt", "decode_length", "check_length", "min_run_time"):
        _positive(f"inference.{key}", i[key])
    if i.decode_length < 2:
        raise ConfigError(f"inference.decode_length={i.decode_length}: at least 2 (decode speed is n new tokens "
                          "against 1).")
    for key in ("prompt_lengths", "decode_batches"):
        if not i[key] or any(int(x) <= 0 for x in i[key]):
            raise ConfigError(f"inference.{key}={list(i[key])} must be a non-empty list of positive integers.")


ORDER_STAGES = ("record", "estimate", "memorize", "curriculum")


def validate_data_files(cfg: Any) -> None:
    """``data.files``: every file readable, UTF-8, with text, and enough of it for training (and for
    the order stages when they run), before anything runs; the contents' digest becomes the key."""
    d = cfg.data
    if not 0 < d.holdout < 0.5:
        raise ConfigError(f"data.holdout={d.holdout} must lie in (0, 0.5): the fraction of documents for each of "
                          "the test and validation splits.")
    if not d.files:
        return
    infos = userfiles.inspect_files(list(d.files))
    t, r = cfg.train, cfg.record
    needs = {f"train (batch_size {t.batch_size} x seq_len {t.seq_len} x {t.max_batches or 1} batches)":
             t.batch_size * t.seq_len * (t.max_batches or 1)}
    if not cfg.stages or any(s in ORDER_STAGES for s in cfg.stages):
        needs["record ((skip_batches + num_batches) x batch_size x seq_len)"] = (
            (r.skip_batches + r.num_batches) * r.batch_size * r.seq_len)
    userfiles.check_size(infos, d.holdout, needs)
    _write_back(d, "files", [str(i.path.resolve()) for i in infos])  # stage processes may run elsewhere
    _write_back(d, "files_digest", userfiles.digest(infos))


def validate_estimators(e: Any, memorize: Any, curriculum: Any) -> None:
    """Estimator choices and options against the estimator registry: every name is registered,
    options are given only for the estimators that run and are each one's own, memorization uses
    one that gives parameters, curriculum proposers propose. Typed options are written back."""
    chosen = list(e.estimators)
    for name in chosen:
        order_registry.get(name, "estimate.estimators")
    opts = _plain(e.options)
    for name, values in opts.items():
        est = order_registry.get(name, "estimate.options: the estimator")
        typed = dataclasses.asdict(est.make_options(values))
        if name not in chosen and typed != dataclasses.asdict(est.make_options()):
            changed = next(k for k in typed if typed[k] != getattr(est.options(), k))
            raise ConfigError(f"estimate.options.{name}.{changed}={typed[changed]!r} is set but {name} is not in "
                              f"estimate.estimators ({', '.join(chosen) or 'none'}).")
    _write_back(e, "options", {n: dataclasses.asdict(order_registry.get(n).make_options(opts.get(n))) for n in chosen})
    est = order_registry.get(memorize.estimator, "memorize.estimator")
    if not est.gives_params:
        raise ConfigError(f"memorize.estimator={est.name} gives losses, not parameters; memorization needs the "
                          f"final weights (one of {', '.join(order_registry.names(gives_params=True))}).")
    _write_back(memorize, "options",
                dataclasses.asdict(est.make_options(_plain(memorize.options), key="memorize.options")))
    est = order_registry.get(curriculum.estimator, "curriculum.estimator")
    _write_back(curriculum, "options",
                dataclasses.asdict(est.make_options(_plain(curriculum.options), key="curriculum.options")))
    for name in curriculum.proposers:
        if not order_registry.get(name, "curriculum.proposers").proposes_order:
            proposing = [n for n in order_registry.names() if order_registry.get(n).proposes_order]
            raise ConfigError(f"curriculum.proposers: {name} proposes no order (those that do: "
                              f"{', '.join(proposing) or 'none'}).")


def _write_back(node: Any, key: str, value: Any) -> None:
    """Fill in the typed defaults, so two spellings of the same options plan the same stage."""
    try:
        node[key] = value
    except ReadonlyConfigError:
        pass


def validate_prune(p: Any, calibrate: Any) -> Any:
    """The prune section against the method registry: the method exists, its options are its own
    (a key of another method is an error) and fit the pattern, and what it needs is computed.
    The typed options are written back (defaults filled in), so ``prune=sparsegpt`` and
    ``prune.method=sparsegpt`` plan the same stage. Returns the typed options."""
    method = pruning_registry.get(p.method)
    opts = method.make_options(_plain(p.options))
    if p.sparsity is not None and not (0.0 < p.sparsity < 1.0):
        raise ConfigError(f"prune.sparsity={p.sparsity} must lie strictly between 0 and 1 (0.5 = half the weights).")
    nm = parse_pattern(p.pattern)
    if nm is not None:
        fixed = pattern_sparsity(nm)
        if p.sparsity is not None and abs(p.sparsity - fixed) > 1e-9:
            raise ConfigError(f"prune.pattern={p.pattern} fixes the sparsity at {fixed:g}, but prune.sparsity={p.sparsity} "
                              f"was set; drop prune.sparsity (or sweep sparsities with prune.pattern=unstructured).")
    check_method(method, nm, p.pattern, opts)
    check_walk(p.walk, method)
    check_kernels(p.kernels, "prune.kernels")
    _positive("prune.batch_size", p.batch_size)
    Profile(p.profile, p.owl_m, p.owl_lambda)  # a known profile
    if p.profile != "owl" and (p.owl_m != 5.0 or p.owl_lambda != 0.08):
        raise ConfigError(f"prune.owl_m / prune.owl_lambda apply to prune.profile=owl, not {p.profile}.")
    if p.profile == "owl":
        if nm is not None:
            raise ConfigError("prune.profile=owl sets a sparsity per block, but prune.pattern="
                              f"{p.pattern} fixes it; use prune.pattern=unstructured with OWL.")
        _positive("prune.owl_m", p.owl_m)
        sparsity = effective_sparsity(p)
        if not 0 <= 2 * p.owl_lambda < min(sparsity, 1 - sparsity):
            raise ConfigError(f"prune.owl_lambda={p.owl_lambda} must lie in [0, {min(sparsity, 1 - sparsity) / 2:g}) at "
                              f"sparsity {sparsity:g}, so every block's sparsity stays between 0 and 1.")
    if method.needs_gradients and not calibrate.gradients:
        raise ConfigError(f"prune.method={p.method} needs calibrate.gradients=true (its scores use the gradient norms).")
    _write_back(p, "options", dataclasses.asdict(opts))
    return opts


def _plain(node: Any) -> Dict[str, Any]:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node or {})


def effective_sparsity(prune_cfg: Any) -> float:
    """The sparsity a prune config asks for: fixed by an N:M pattern, else prune.sparsity (unset: 0.5)."""
    nm = parse_pattern(prune_cfg.pattern)
    if nm is not None:
        return pattern_sparsity(nm)
    return 0.5 if prune_cfg.sparsity is None else float(prune_cfg.sparsity)
