"""Read-only analytics over the dbt output schema: the metric catalog, curated example queries and
the reader that runs them through the analyst role (docs/analytics.md)."""
