//! The fuzz targets' checks (see `checks.rs`); the targets are in `src/bin/`.
pub mod checks;
