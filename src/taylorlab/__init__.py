"""taylorlab: retraining-free LLM experiments (training-order effects, gradient-informed pruning).

The method libraries (``taylorlab.data``, ``taylorlab.models``, ``taylorlab.training``,
``taylorlab.evaluation``, ``taylorlab.pruning``) need only torch and transformers; the engine,
configs and tracking add Hydra, submitit and W&B on top.
"""

__version__ = "0.1.0"
