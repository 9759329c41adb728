"""Run state shared by every stage: the home folder, the model registry, the traffic store."""
