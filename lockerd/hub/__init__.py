"""The hub itself: pure rules (domain), codes and guessing, the store, the service every
action goes through, and the door monitor. No network, no sockets."""
