"""The composition package: the `strata` command, `strata up`/`demo`/`generate` and the supervisor.

It may import every daemon package; no daemon imports it. The daemons share only `protos/` and
the daemon runtime.
"""
