"""The ``atrous`` command line (``app.cli.main``)."""
