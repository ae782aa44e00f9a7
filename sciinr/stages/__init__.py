"""Pipeline stages, one module each; only :mod:`sciinr.api` composes them."""
