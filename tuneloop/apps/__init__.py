"""The applications on top of the stages: the console script, the demo, the load generator."""
