"""The ground: errors, logging, durable writes, shared settings. Imports nothing of the project."""
