"""``python -m app``: serve with settings from the ``ATROUS_*`` environment."""

from app.main import serve

if __name__ == "__main__":  # not when a spawned worker process imports it
    serve()
