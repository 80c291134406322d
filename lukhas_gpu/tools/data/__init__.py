"""Data files shipped with the package (the fitted synthetic-dataset model)."""
