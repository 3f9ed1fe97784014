//! mcp-auth (filled by its own issue).
