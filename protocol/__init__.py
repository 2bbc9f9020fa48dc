"""cast.protocol: what the CLI, the control plane and the worker share.

The ground floor of the house: `client/`, `server/` and `worker/` import this
package and never each other. Plain Python with no third-party imports, since
the CLI imports it on every call and must start fast.

- `status`: the run status vocabulary, its transition table, stage lines.
- `validate`: validation of everything a user can put in a run spec.
- `messages`: the typed messages that cross HTTP (`RunSpec`, `LogStream`, ...); those
  only a worker and the control plane exchange (`Lease`, ...) in `worker_messages`.
- `units`: the one duration parser and the one size formatter.
- `hyper`: hyperparameter searches' statuses, params, placeholders and sampling.
"""
