"""Several models and versions in one server: the repository layout on disk
(``layout``) and the manager that loads, swaps and leases versions (``manager``); each
version's metrics are ``app.metrics.VersionSeries``, labelled ``model`` and ``version``."""
