"""Data lifecycle: day partitions created ahead (partitions.py), archive then retain, restore (archive.py)."""
