//! shard function tests (to be written).
