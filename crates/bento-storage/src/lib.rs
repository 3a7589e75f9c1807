//! Instance storage (skeleton; see the task).
