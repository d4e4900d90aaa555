"""Pruning of Hugging Face decoder-only models: magnitude, Wanda, SparseGPT and GBLM-Pruner.

Split as the method notes ask: statistics accumulated by hooks (``stats``), rules that turn
statistics into masks or updates (``rules``), mask shapes (``masks``), the layer-by-layer driver
(``driver``), and the dense model's per-sequence gradient norms (``gradients``). Needs torch (and
transformers only to recognise its Conv1D layers).
"""

from taylorlab.pruning.driver import check_prunable, prune_model, sparsity_report  # noqa: F401
from taylorlab.pruning.gradients import per_sequence_gradient_stats  # noqa: F401
from taylorlab.pruning.masks import mask_nm, mask_per_row, mask_per_matrix  # noqa: F401
from taylorlab.pruning.structure import (  # noqa: F401
    BlockCall, capture_block_calls, find_decoder_layers, find_linears, run_block, weight_matrix,
)
