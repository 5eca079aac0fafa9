"""How a graph failed to start, as kinds of ``ActorFailed`` (``errors.py`` draws the tree).

    ActorFailed
    ├── BadOperator     an operator could not be built at the first start-up (the actor
    │                   exited with EXIT_BAD_OPERATOR, 2): the same topology fails the same
    │                   way again, so no restart is tried; ``up`` exits 2
    └── StartTimeout    not every actor was Ready within ``timeouts.start_s``

Light on purpose: the CLI imports it without the runtime.
"""

from __future__ import annotations

from ..errors import ActorFailed, BadOperator, StartTimeout

__all__ = ["ActorFailed", "BadOperator", "StartTimeout"]
