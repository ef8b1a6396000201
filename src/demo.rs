//! The demo workload.
