"""The data lifecycle of the ledger: replay (and, beside it, partitions and archives)."""
