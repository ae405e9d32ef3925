"""The live dashboard: one local web page for a running swarm or a finished run.

- :mod:`edgedfl.dashboard.view`: ``SwarmView``, the devices' last verified
  status (signed ``metrics`` messages, :mod:`edgedfl.wire.metrics`) and what was refused.
- :mod:`edgedfl.dashboard.server`: ``Dashboard``, the Starlette app on uvicorn (the
  ``dashboard`` extra) that serves the page and pushes the view as server-sent events.
- ``static/``: the page (HTML, JS, CSS) and the vendored uPlot and cytoscape.js with their licences.

``edgedfl dashboard --broker URL --swarm NAME`` follows a live swarm;
``edgedfl dashboard --run DIR`` shows a finished run; ``edgedfl emulate --dashboard``
starts one next to the emulator's broker. See ``docs/dashboard.md``.
"""

from edgedfl.dashboard.view import SwarmView

__all__ = ["SwarmView"]
