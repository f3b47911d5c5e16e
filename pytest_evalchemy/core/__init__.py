"""The foundation: errors, packaged resources, the config model, the results layout and
the record vocabulary. Imports nothing else of the package."""
