"""nncert package."""
