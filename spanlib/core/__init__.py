"""Device, checkpoints and the one atomic writer, configurations, project paths."""
