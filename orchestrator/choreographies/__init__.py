"""The choreographies of DESIGN.md §5: each patent figure (or paragraph) an
explicit, journaled sequence of steps, one module per choreography.

The framework is :mod:`orchestrator.choreographies.base` (steps, runs, the
journal, rollback, recovery). A choreography's module builds its steps,
registers its builder (``@figure``, for recovery after a crash) and its
control request (``@control``, :mod:`orchestrator.control`). Importing this
package imports every module in it, so adding a choreography is adding its
module (and, for the command line, a command in ``orchestrator/cli/``):
nothing else keeps a list of them.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):  # every choreography registers itself on import
    importlib.import_module(f"{__name__}.{_module.name}")
