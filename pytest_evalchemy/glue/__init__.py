"""The pytest glue: options, the run's state, the items, the reporter, selection and the
fixture's api. The entry point is ``pytest_evalchemy.plugin``."""
