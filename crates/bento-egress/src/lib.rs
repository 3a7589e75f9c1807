//! Outbound connections a function may make (skeleton; see the task).
