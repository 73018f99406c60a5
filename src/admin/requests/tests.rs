//! Tests of the request list.
