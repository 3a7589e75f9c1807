//! proxy function tests (to be written).
