"""The worker agent: one per machine; runs containers and is their only path to the control plane."""
