"""A package, so that the servers its conftest starts are package-scoped: they stop after the last e2e test."""
