"""flagmetrics tests."""
