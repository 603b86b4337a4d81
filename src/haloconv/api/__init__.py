"""The Python face: ``conv`` and ``execute`` on arrays and tensors in memory
(``in_memory``), ``conv_file`` on files bigger than memory (``out_of_core``), and ``plan``
(the planner's).  Each reads its keywords once into values (options.py) and hands
them to the planner and to the one dispatch (haloconv/dispatch.py)."""

from haloconv.api.in_memory import conv, execute
from haloconv.api.out_of_core import conv_file
from haloconv.planner import plan

__all__ = ["conv", "conv_file", "execute", "plan"]
