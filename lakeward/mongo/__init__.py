"""MongoDB adapter: the only package that imports pymongo."""
