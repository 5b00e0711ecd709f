"""The `iot-platform` command and the supervisor behind `make up`.

- `main.py`: the click group and the list of subcommands (`COMMANDS`), exit statuses.
- `database.py` (db, migrate, dbt), `services.py` (serve, writer, mqtt, publish), `up.py` (up: the
  supervisor), `dagster.py` (Dagster beside `up`), `lifecycle.py` (partitions, archive, restore).
- `processes.py`: the one process helper (start, stop, wait until ready, `up`'s supervised set);
  tests and benchmarks start the platform's processes through it too.

The settings stay in `ingest_service/core/config.py`; this package imports the services it runs,
never the other way round.

Adding a subcommand: one click command in the module of its kind (or a new module), e.g.

    @click.command(help="archive the ledger's partitions older than RETENTION (docs/lifecycle.md)")
    @click.option("--dry-run", is_flag=True, help="list what would be archived")
    def archive(dry_run: bool) -> int:
        from lifecycle import archive as archiving  # heavy imports inside: every command starts fast

        return archiving.run(database_settings(), dry_run=dry_run)

then add it to `COMMANDS` in `main.py`. It returns its exit status; configuration errors
(pydantic `ValidationError`) become exit 2 with one line per error; `tests/test_cli.py` checks that
every command has a `--help`.
"""
