"""Report a metric from inside a cast run: `cast_metrics.log("loss", 0.53, step=120)`.

The worker puts a copy of this file on the run's PYTHONPATH as `cast_metrics`
(local and Docker runs alike), so a run imports it with nothing installed;
outside a run it is `cast.protocol.cast_metrics`. It only appends one JSON line
per call to the file `$CAST_METRICS` names (docs/metrics.md), so it imports
nothing but the standard library; outside a run (no `CAST_METRICS`) a call
does nothing. The worker checks every line; a bad one is refused there and
named in the run's log, never raised here.
"""

import json
import os
import threading

__all__ = ["log"]

_lock = threading.Lock()


def log(name, value, step=None):
    """Append the point (`name`, `value`, `step`) to the run's metrics file."""
    path = os.environ.get("CAST_METRICS")
    if not path:
        return
    if not isinstance(value, (int, float)):
        value = float(value)  # a NumPy scalar, a one-element tensor
    point = {"name": name, "value": value}
    if step is not None:
        point["step"] = step
    line = json.dumps(point) + "\n"
    # One write per line in append mode: lines of concurrent writers never interleave.
    with _lock:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
