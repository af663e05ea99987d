"""The engine of ``SinglecorePool``: every chunk runs at once in the caller's process."""
