"""The HTTP API layer: routes, their dependencies, errors and schemas."""
