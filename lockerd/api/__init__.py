"""The local API: Unix sockets for the technician (known by the OS) and for each terminal
at the hub (keypad, kiosk), with what each role may ask."""
