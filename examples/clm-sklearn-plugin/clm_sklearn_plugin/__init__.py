"""Example CLM plug-in: wraps `legacy.train_direction_model` as a CLM trainer."""
