"""Deliver lines in batches to the platform, retrying until each line has an answer or is given up.

One module per job, in the order a line goes through them:

- `items`: a line, its result, `Undelivered`
- `config`: every delivery option, declared once (the settings and the command line derive from it)
- `pipe`: read lines, batch them (size or linger), keep batches in flight, account in input order
- `retry`: deliver one batch: retry transient failures (tenacity), split batches too large, give up
- `transport`: the seam between batching and the wire: send a batch, get one result per line
- `http_transport`: that seam over `POST /ingest` (body encoding, status codes, `Retry-After`)
- `mqtt_transport`: that seam over MQTT (a QoS 1 message per line on its device's topic, PUBACK as the answer)
- `accounting`: counts per status and reason, the summary
- `dead_letter`: undelivered lines, verbatim, to be piped in again
- `console`: what goes to stderr while running (log lines, `--verbose` results, `--progress`)
"""
