"""Test support shipped with the plugin: a vLLM-compatible server and its answer key."""
