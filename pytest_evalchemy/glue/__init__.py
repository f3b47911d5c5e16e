"""The pytest glue: options, the run's state, the items, the reporter, selection and the
fixture's api. The entry point is ``entry.py``; it loads ``pytest_evalchemy.plugin`` when a run is asked for."""
