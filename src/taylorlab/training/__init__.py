"""AdamW training in an explicit batch order, with full, atomic, resumable checkpoints."""

from taylorlab.training import distributed  # noqa: F401
from taylorlab.training.trainer import TrainSettings, batch_order, make_batches, train  # noqa: F401
