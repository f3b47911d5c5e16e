"""The task YAMLs: the quick index of names (``index``), the full read of a task's data
files (``catalog``), and the checks of a config's task names and few-shot counts (``checks``)."""
