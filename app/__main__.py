"""``python -m app``: serve with settings from the ``ATROUS_*`` environment."""

from app.main import serve

serve()
