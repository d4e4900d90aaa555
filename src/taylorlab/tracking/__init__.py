from taylorlab.tracking.metrics import Tracker, read_metrics, configure_wandb_env  # noqa: F401
