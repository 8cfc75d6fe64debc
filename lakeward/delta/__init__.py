"""Delta Lake adapter: the only package that imports deltalake."""
