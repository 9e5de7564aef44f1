"""Running on an edge box: systemd notify and watchdog, Prometheus metrics, one daemon per
state directory."""
