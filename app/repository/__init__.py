"""Several models and versions in one server: the repository layout on disk
(``layout``), the manager that loads, swaps and leases versions (``manager``), and the
metrics view that labels each version's series (``metrics``)."""
