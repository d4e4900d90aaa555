"""The stage graph, declared once. Adding a stage = one module here + one entry below + its config.

Stages never import each other: they meet through artifacts on disk (each stage's manifest.json).
"""

from taylorlab.engine.graph import Graph, Node, StageSpec

DATA = StageSpec("data", "taylorlab.stages.data:run", "text splits (datasets, local JSON) and a BPE tokenizer")
MODEL = StageSpec("model", "taylorlab.stages.model:run", "the base model: built, loaded or converted once")
TRAIN = StageSpec("train", "taylorlab.stages.train:run", "AdamW in an explicit batch order, resumable",
                  distributed=True)
EVALUATE = StageSpec("evaluate", "taylorlab.stages.evaluate:run", "perplexity in non-overlapping windows")
CALIBRATE = StageSpec("calibrate", "taylorlab.stages.calibrate:run", "calibration windows and gradient norms")
PRUNE = StageSpec("prune", "taylorlab.stages.prune:run", "one registered pruning method, sparsity and pattern")
INFERENCE = StageSpec("inference", "taylorlab.stages.inference:run",
                      "dense against pruned at serving time: prefill, decode, memory, 2:4 kernels")
RECORD = StageSpec("record", "taylorlab.stages.record:run", "the reference run, every step kept, for order estimates")
ESTIMATE = StageSpec("estimate", "taylorlab.stages.estimate:run", "order estimators against real retraining")
MEMORIZE = StageSpec("memorize", "taylorlab.stages.memorize:run",
                     "memorization by position: M[i, j] estimated and retrained, heatmaps")
CURRICULUM = StageSpec("curriculum", "taylorlab.stages.curriculum:run",
                       "curricula ranked by an estimator, the best verified by retraining")
REPORT = StageSpec("report", "taylorlab.stages.report:run", "tables and a page of this pipeline's results")

# the model under study: the trained model when train is part of the run, else the base model
STUDIED = ("train", "base_model")

GRAPH = Graph(
    [
        Node("data", DATA),
        Node("base_model", MODEL, parents={"data": ("data",)}, config="model"),
        Node("train", TRAIN, parents={"data": ("data",), "model": ("base_model",)}),
        Node("evaluate_dense", EVALUATE, parents={"data": ("data",), "model": STUDIED}, config="evaluate"),
        Node("calibrate", CALIBRATE, parents={"data": ("data",), "model": STUDIED}),
        Node("prune", PRUNE, parents={"calibrate": ("calibrate",), "model": STUDIED}),
        Node("evaluate_pruned", EVALUATE, parents={"data": ("data",), "model": ("prune",)}, config="evaluate"),
        Node("inference", INFERENCE, parents={"dense": STUDIED, "pruned": ("prune",)}),
        # order studies continue from the model under study: the trained model when train runs too
        Node("record", RECORD, parents={"data": ("data",), "model": STUDIED}),
        Node("estimate", ESTIMATE, parents={"record": ("record",)}),
        Node("memorize", MEMORIZE, parents={"record": ("record",)}),
        Node("curriculum", CURRICULUM, parents={"record": ("record",)}),
        Node(
            "report", REPORT,
            parents={"dense": ("evaluate_dense",), "pruned": ("evaluate_pruned",), "train": ("train",),
                     "inference": ("inference",),
                     "orders": ("estimate",), "memorization": ("memorize",), "curriculum": ("curriculum",)},
            optional_parents=("dense", "pruned", "train", "inference", "orders", "memorization", "curriculum"),
        ),
    ]
)
