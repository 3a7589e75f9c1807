//! cover function tests (to be written).
