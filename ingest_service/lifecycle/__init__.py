"""Data lifecycle of the ledger: day partitions created ahead (partitions.py), archive then retain, restore
(archive.py), replay of rows whose current outcome is an error (replay.py)."""
