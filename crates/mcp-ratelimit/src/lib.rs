//! mcp-ratelimit (filled by its own issue).
