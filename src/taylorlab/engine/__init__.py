"""The stage engine: the graph as data, run directories, hashing, DONE markers, submitit executors.

It knows nothing of pruning or training orders: it runs ``StageSpec``s and owns where artifacts live.
"""

from taylorlab.engine.graph import Graph, Node, StageSpec  # noqa: F401
from taylorlab.engine.context import StageContext  # noqa: F401
