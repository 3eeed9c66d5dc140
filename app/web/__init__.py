"""The web page: static files shipped with the package, served by ``routes.router``."""
