//! loadbalancer function tests (to be written).
