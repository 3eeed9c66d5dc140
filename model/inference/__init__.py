"""The inference wing: what runs an exported model (no tf-slim, no ``model.nets`` here)."""
