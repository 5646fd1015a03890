"""Benchmarks that need the whole stack (data, model, trainer): `unirec bench ...`."""
