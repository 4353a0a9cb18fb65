//! The properties the fuzz targets assert, kept in a library so that the
//! targets stay one call each and the main test suite can replay saved inputs
//! through the very same checks (`tests/it/fuzz_regressions.rs` includes
//! [`checks`] by path).

pub mod checks;
