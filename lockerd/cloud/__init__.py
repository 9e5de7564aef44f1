"""The operator's cloud: the MQTT contract (commands, replies, events, signatures) and the
link that carries it, with its outbox pump."""
