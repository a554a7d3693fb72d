"""Use cases of the control plane: each module owns one resource's SQL and its wake-ups."""
