//! Tests of the overview.
