"""Pruning of Hugging Face decoder-only models: magnitude, Wanda, SparseGPT and GBLM-Pruner, and
any method registered beside them (``registry``).

Split as the method notes ask: statistics accumulated by hooks (``stats``), the methods' rules
(``methods/``, one module each, registered by name), mask shapes (``masks``), the layer-by-layer
driver (``driver``), and the dense model's per-sequence gradient norms (``gradients``). Needs torch
(and transformers only to recognise its Conv1D layers).
"""

from taylorlab.pruning import methods  # noqa: F401  (registers the built-in methods)
from taylorlab.pruning.driver import (Profile, check_method, check_prunable, check_walk, prune_model,  # noqa: F401
                                      sparsity_report, walk_sequential)
from taylorlab.pruning.gradients import per_sequence_gradient_stats  # noqa: F401
from taylorlab.pruning.masks import mask_nm, mask_per_row, mask_per_matrix  # noqa: F401
from taylorlab.pruning.registry import Calibration, LayerTask, Method, register  # noqa: F401
from taylorlab.pruning.structure import (  # noqa: F401
    BlockCall, capture_block_calls, find_decoder_layers, find_linears, run_block, weight_matrix,
)
