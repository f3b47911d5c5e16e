"""The plugin's one seam to lm-evaluation-harness: the only package that imports ``lm_eval``."""
