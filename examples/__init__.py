"""Examples for flagmetrics."""
