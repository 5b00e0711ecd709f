"""The MQTT door: devices publish to a broker, `iot-platform mqtt` stores each message through the
same write path as `POST /ingest` and publishes its results (docs/mqtt.md).

- topics.py   the topic scheme: which topics are subscribed, what a topic names, where results go
- door.py     the adapter to the write path (parse, the topic rule, the message key, ingest, answer)
- bridge.py   the broker side: persistent session, bounded in-flight window, acks after commit
"""
