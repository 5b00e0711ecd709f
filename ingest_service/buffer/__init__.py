"""Buffered ingest on NATS JetStream (INGEST_BUFFER=jetstream; docs/scaling.md).

stream.py     the connection, the streams and the writers' consumer, their state
publisher.py  the API side: publish a checked body, answer its receipt
door.py       every call into the write path: message -> items + delivery (its key) -> results
writer.py     `iot-platform writer`: durable pull consumers that store messages through the write path
receipts.py   what a receipt says: stored (with its results), accepted, dead-lettered or unknown
metrics.py    Prometheus metrics of the backlog and of each writer
"""
