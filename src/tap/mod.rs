//! The response tap: watches the bytes going back to the caller (SSE or JSON) for usage, prefix and body.
