//! Per-backend request rewriting: stop words, token cap, extra fields, model alias, stream usage.
