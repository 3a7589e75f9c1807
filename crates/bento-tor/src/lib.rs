//! Tor integration (skeleton; see the task).
