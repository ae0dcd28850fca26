"""Programs the tests run as separate processes (`python -m tests.workers.<name> ...`)."""
