"""Several server processes on one port: a supervisor and its workers (``ATROUS_WORKERS``).

``supervisor`` reserves the port, spawns the workers, restarts the ones that die and drains
them all on SIGTERM; ``worker`` is what each spawned process runs (the whole app, on a
listening socket of its own: ``sockets``); ``node`` is the few bytes of shared state that
let any worker answer ``/readyz`` for all.
"""
